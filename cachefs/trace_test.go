package cachefs

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/hearth-gpu/hearth/proto"
)

// This file replays synthetic job traces against eviction policies, for
// BenchmarkEvictionPolicies and the policy tests. A trace is a list of jobs,
// each naming the blobs it needs; the simulated cache follows the store's
// event order (victims, admit, then remove each victim) and pins the blobs
// a job already has while it fetches the rest, as an agent does.

const gb = int64(1e9)

// simBlob is one model file in a simulated catalog.
type simBlob struct {
	d    proto.Digest
	size int64
}

// family is one base model family: checkpoints, and the VAEs and LoRAs
// that only work with them.
type family struct {
	ckpts, vaes, loras []simBlob
}

// traceSpec describes a trace; the same spec always yields the same trace.
type traceSpec struct {
	name   string
	seed   uint64
	jobs   int     // jobs in the trace
	warmup int     // leading jobs whose requests are not counted
	skew   float64 // Zipf exponent of popularity, within each kind of blob
	// drift: every driftEvery jobs, a few blobs from the unpopular half of
	// each ranking (new releases) jump into its top ranks.
	driftEvery int
}

// trace is the generated job list.
type trace struct {
	spec    traceSpec
	jobs    [][]simBlob
	catalog int64 // bytes of all blobs
}

// newCatalog builds the model catalog: SD1.5, SDXL and Flux families with
// realistic sizes. LoRAs are many and small, checkpoints few and large.
func newCatalog(r *rand.Rand) []family {
	var next uint64
	blob := func(lo, hi int64, logUniform bool) simBlob {
		next++
		var size int64
		if logUniform {
			size = int64(math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
		} else {
			size = lo + r.Int64N(hi-lo+1)
		}
		return simBlob{d: proto.Digest(fmt.Sprintf("sha256:%064x", next)), size: size}
	}
	many := func(n int, lo, hi int64, logUniform bool) []simBlob {
		out := make([]simBlob, n)
		for i := range out {
			out[i] = blob(lo, hi, logUniform)
		}
		return out
	}
	const mb = gb / 1000
	return []family{
		{ // SD1.5: pruned fp16 (2 GB) to full (4 GB) checkpoints
			ckpts: many(60, 2*gb, 4*gb, false),
			vaes:  many(3, 160*mb, 330*mb, false),
			loras: many(400, 10*mb, 150*mb, true),
		},
		{ // SDXL: every checkpoint is 6.9 GB
			ckpts: many(40, 6900*mb, 6900*mb, false),
			vaes:  many(3, 160*mb, 330*mb, false),
			loras: many(300, 20*mb, 800*mb, true),
		},
		{ // Flux: fp8 (12 GB) to fp16 (24 GB)
			ckpts: many(15, 12*gb, 24*gb, false),
			vaes:  many(1, 330*mb, 330*mb, false),
			loras: many(150, 20*mb, 700*mb, true),
		},
	}
}

// ranking is a popularity order over n items, sampled by Zipf on rank.
type ranking struct {
	order []int     // rank -> item
	cdf   []float64 // cumulative Zipf weight of ranks 0..i
}

func newRanking(r *rand.Rand, n int, skew float64) *ranking {
	k := &ranking{order: r.Perm(n), cdf: make([]float64, n)}
	var sum float64
	for i := range n {
		sum += 1 / math.Pow(float64(i+1), skew)
		k.cdf[i] = sum
	}
	for i := range k.cdf {
		k.cdf[i] /= sum
	}
	return k
}

func (k *ranking) sample(r *rand.Rand) int {
	return k.order[min(sort.SearchFloat64s(k.cdf, r.Float64()), len(k.order)-1)]
}

// promote moves m items from the unpopular half into the top tenth.
func (k *ranking) promote(r *rand.Rand, m int) {
	n := len(k.order)
	if n < 4 {
		return
	}
	for range m {
		from := n/2 + r.IntN(n-n/2)
		to := r.IntN(max(n/10, 1))
		it := k.order[from]
		k.order = slices.Delete(k.order, from, from+1)
		k.order = slices.Insert(k.order, to, it)
	}
}

// genTrace generates spec's trace. A job picks a checkpoint by popularity
// across all families, then from that family maybe a VAE (40%) and 0–3
// distinct LoRAs, each by popularity within its kind.
func genTrace(spec traceSpec) trace {
	r := rand.New(rand.NewPCG(spec.seed, 0x6361636865))
	fams := newCatalog(r)
	var ckpts []simBlob
	var famOf []int
	tr := trace{spec: spec}
	for fi, f := range fams {
		ckpts = append(ckpts, f.ckpts...)
		for range f.ckpts {
			famOf = append(famOf, fi)
		}
		for _, b := range slices.Concat(f.ckpts, f.vaes, f.loras) {
			tr.catalog += b.size
		}
	}
	ckptRank := newRanking(r, len(ckpts), spec.skew)
	vaeRank := make([]*ranking, len(fams))
	loraRank := make([]*ranking, len(fams))
	for i, f := range fams {
		vaeRank[i] = newRanking(r, len(f.vaes), spec.skew)
		loraRank[i] = newRanking(r, len(f.loras), spec.skew)
	}
	for j := range spec.jobs {
		if spec.driftEvery > 0 && j > 0 && j%spec.driftEvery == 0 {
			ckptRank.promote(r, 1)
			for i := range fams {
				loraRank[i].promote(r, 3)
			}
		}
		c := ckptRank.sample(r)
		f := famOf[c]
		job := []simBlob{ckpts[c]}
		if r.Float64() < 0.4 {
			job = append(job, fams[f].vaes[vaeRank[f].sample(r)])
		}
		for range r.IntN(4) {
			l := fams[f].loras[loraRank[f].sample(r)]
			if !slices.Contains(job, l) {
				job = append(job, l)
			}
		}
		tr.jobs = append(tr.jobs, job)
	}
	return tr
}

// simResult counts requests after the warm-up.
type simResult struct {
	reqs, misses    int
	bytes, missed   int64
	admitRefused    int // misses that could not be cached: all pinned
	maxUsed, budget int64
}

func (r simResult) byteMiss() float64   { return float64(r.missed) / float64(r.bytes) }
func (r simResult) objectMiss() float64 { return float64(r.misses) / float64(r.reqs) }

// simulate replays tr against p with a budget of budget bytes. restartEvery
// > 0 replaces p with a fresh one from newP every so many jobs, seeded as
// Open seeds it (oldest use first), to measure what losing use counts
// costs. It returns an error if p breaks the policy contract: a victim that
// is pinned, unknown or repeated, or too few victims when more were free.
func simulate(tr trace, p policy, budget int64, restartEvery int, newP func(int64) policy) (simResult, error) {
	res := simResult{budget: budget}
	type cached struct {
		size int64
		last int
	}
	cache := make(map[proto.Digest]*cached)
	var used int64
	var clock int
	pinned := make(map[proto.Digest]bool)
	isPinned := func(d proto.Digest) bool { return pinned[d] }
	seen := make(map[proto.Digest]bool)
	for j, job := range tr.jobs {
		if restartEvery > 0 && j > 0 && j%restartEvery == 0 {
			p = newP(budget)
			ds := make([]proto.Digest, 0, len(cache))
			for d := range cache {
				ds = append(ds, d)
			}
			slices.SortFunc(ds, func(a, b proto.Digest) int { return cache[a].last - cache[b].last })
			for _, d := range ds {
				p.admit(d, cache[d].size)
			}
		}
		clear(pinned)
		count := j >= tr.spec.warmup
		for _, b := range job {
			clock++
			if count {
				res.reqs++
				res.bytes += b.size
			}
			if c, ok := cache[b.d]; ok {
				c.last = clock
				p.access(b.d)
				pinned[b.d] = true
				continue
			}
			if count {
				res.misses++
				res.missed += b.size
			}
			need := used + b.size - budget
			var victims []proto.Digest
			if need > 0 {
				victims = p.victims(need, isPinned)
				clear(seen)
				var freed int64
				for _, v := range victims {
					c, ok := cache[v]
					switch {
					case !ok:
						return res, fmt.Errorf("job %d: victim %s is not cached", j, v.Short())
					case pinned[v]:
						return res, fmt.Errorf("job %d: victim %s is pinned", j, v.Short())
					case seen[v]:
						return res, fmt.Errorf("job %d: victim %s returned twice", j, v.Short())
					}
					seen[v] = true
					freed += c.size
				}
				if freed < need {
					var free int64
					for d, c := range cache {
						if !pinned[d] {
							free += c.size
						}
					}
					if freed != free {
						return res, fmt.Errorf("job %d: victims free %d of the %d bytes needed, but %d are unpinned", j, freed, need, free)
					}
					res.admitRefused++
					continue // ErrNoSpace: nothing evicted, nothing cached
				}
			}
			cache[b.d] = &cached{size: b.size, last: clock}
			used += b.size
			p.admit(b.d, b.size)
			for _, v := range victims {
				used -= cache[v].size
				delete(cache, v)
				p.remove(v)
			}
			res.maxUsed = max(res.maxUsed, used)
			pinned[b.d] = true
		}
	}
	return res, nil
}

// simPolicy names a policy constructor for the simulator.
type simPolicy struct {
	name string
	new  func(maxBytes int64) policy
}

// simPolicies are the candidates measured, LRU (the baseline) first.
var simPolicies = []simPolicy{
	{"LRU", func(int64) policy { return newLRU() }},
	{"GDSF", func(int64) policy { return newGDSF(bytesCost) }},
	{"GDSF-time", func(int64) policy { return newGDSF(fetchTimeCost(gb / 4)) }},
	{"S3-FIFO", func(m int64) policy { return newS3FIFO(m) }},
	{"SIEVE", func(int64) policy { return newSIEVE() }},
}
