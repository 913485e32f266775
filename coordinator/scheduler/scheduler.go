package scheduler

import (
	"cmp"
	"hash/maphash"
	"math"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Scheduler is hearth's placement policy. Each queued job, highest
// priority first and FIFO within a priority, goes to the slot where it is
// expected to start soonest, all costs counted: score = wait + load +
// ShareWeight·share + EvictWeight·evict, where
//
//   - wait is how long the slot needs for the job already on it (none when
//     the slot is open);
//   - load is, for each model the slot will not hold by then, its size
//     over the bandwidth of the tier it sits in on that host (ram, disk,
//     rack, peer, origin); a disk read waits behind the reads already
//     placed on that host's disk;
//   - share is how long the job would run beside the jobs of the GPU's
//     other slots, since jobs on one GPU share its compute;
//   - evict is what the models the worker would unload to make room cost
//     to load again, weighted by how likely they are to be wanted soon
//     (their recent demand over their other warm copies).
//
// Binding is late. A job goes only to a slot that can start it now (open)
// or right after its one current job (soon); otherwise it waits in the
// global queue and the next pass, when some slot frees, looks again. Jobs
// asking for a model a soon slot will hold follow each other there.
//
// Candidates come from the fleet's indexes, never a scan: the slots that
// will hold each of the job's models, the open slots of hosts that cache
// its largest models, and open slots on the least busy GPUs. Each is
// scored exactly. After a job, its slot warms what jobs of its class were
// most often asked for with besides (see companions).
type Scheduler struct {
	cfg Config

	rot     uint64 // where the next probe of an index starts
	stamp   uint32 // marks the slots seen for the current job
	lastGen uint64
	lastFP  uint64
	seed    maphash.Seed
	models  []*blob
	// together counts, per job class (its largest model), how often each
	// other model was asked for with it, decaying: what to warm.
	together map[uint32]map[uint32]*decaying
	rankings map[uint32]*ranking
}

// Config tunes the Scheduler; zero values take the defaults.
type Config struct {
	Clock Clock
	// ShareWeight scales the share term (default 0.5). The simulator
	// showed the trade: at 1 jobs spread over idle GPUs and load cold
	// more often; at 0.1 they stay warm but run slower beside others
	// (latency p99 +20%); 0.5 gave the lowest p99 time to start with
	// the latency of 1.
	ShareWeight float64
	// EvictWeight scales the evict term (default 1).
	EvictWeight float64
	// Candidates is how many slots each index contributes per job
	// (default 12); HostProbes how many caching hosts are looked at per
	// model (default 16).
	Candidates int
	HostProbes int
	// WarmModels and WarmBytes bound what a placement asks its slot to
	// warm after the job (defaults 8 and 4 GiB); WarmModels < 0 turns
	// warming off.
	WarmModels int
	WarmBytes  int64
}

// New returns hearth's scheduler.
func New(cfg Config) *Scheduler {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.ShareWeight == 0 {
		cfg.ShareWeight = 0.5
	}
	if cfg.EvictWeight == 0 {
		cfg.EvictWeight = 1
	}
	cfg.Candidates = cmp.Or(cfg.Candidates, 12)
	cfg.HostProbes = cmp.Or(cfg.HostProbes, 16)
	cfg.WarmModels = cmp.Or(cfg.WarmModels, 8)
	cfg.WarmBytes = cmp.Or(cfg.WarmBytes, 4<<30)
	return &Scheduler{cfg: cfg, seed: maphash.MakeSeed(), together: make(map[uint32]map[uint32]*decaying), rankings: make(map[uint32]*ranking)}
}

// Name implements Policy.
func (s *Scheduler) Name() string { return "hearth" }

// Pass places what it can of the queue and submits the plan.
func (s *Scheduler) Pass(st State, pl Planner) (PassStats, error) {
	now := s.cfg.Clock.Now()
	f := st.Fleet()
	queue := st.Queued()
	stats := PassStats{Queued: len(queue)}
	fp := s.fingerprint(queue)
	f.mu.Lock()
	f.expireLocked(now)
	if f.gen == s.lastGen && fp == s.lastFP {
		// Every job still queued found no slot last time, and no slot
		// has opened or changed since.
		f.mu.Unlock()
		stats.Idle = true
		return stats, nil
	}
	SortQueue(queue)
	var plan []Placement
	for _, j := range queue {
		if f.openCount == 0 && f.soonCount == 0 {
			break // every slot is taken: the rest wait
		}
		best, scored, ok := s.choose(f, j, now)
		stats.Scored += scored
		if !ok {
			continue
		}
		p := s.placement(f, j, best, now)
		f.place(j, best.slot, &p)
		warm := s.companions(f, j, best.slot, now)
		f.setWarm(j.ID, warm)
		pl := Placement{Job: j, Placement: p}
		for _, d := range warm {
			pl.Warm = append(pl.Warm, f.blobs[d].digest)
		}
		plan = append(plan, pl)
		fp -= s.jobHash(j)
	}
	s.lastGen, s.lastFP = f.gen, fp
	f.mu.Unlock()
	placed, err := submit(f, pl, plan)
	stats.Placed = placed
	if placed < len(plan) {
		s.lastGen = 0
	}
	return stats, err
}

// fingerprint sums the queue's ids' hashes: equal sums mean, but for a
// one in 2^64 chance, the same queue, whatever its order.
func (s *Scheduler) fingerprint(queue []*proto.Job) uint64 {
	var fp uint64
	for _, j := range queue {
		fp += s.jobHash(j)
	}
	return fp
}

func (s *Scheduler) jobHash(j *proto.Job) uint64 { return maphash.String(s.seed, j.ID) }

type candidate struct {
	slot        *slot
	score, wait float64
}

// choose returns the best slot for j, how many it scored, and false when
// no slot can take it now.
func (s *Scheduler) choose(f *Fleet, j *proto.Job, now time.Time) (candidate, int, bool) {
	s.models = s.models[:0]
	for _, m := range j.Models {
		b := f.intern(m.Digest, m.Size)
		if !slices.Contains(s.models, b) {
			s.models = append(s.models, b)
		}
	}
	slices.SortStableFunc(s.models, func(a, b *blob) int { return cmp.Compare(b.size, a.size) })
	need := VRAMNeed(j)
	kind := j.Spec.Kind()
	class := noClass
	if len(s.models) > 0 {
		class = s.models[0].id
	}
	runS := f.est.runS(class)
	s.stamp++
	best := candidate{score: math.Inf(1)}
	scored := 0
	try := func(sl *slot) bool {
		if sl.seen == s.stamp {
			return false
		}
		sl.seen = s.stamp
		if sl.cap > 0 && need > sl.cap || !sl.host.takes(kind) {
			return false
		}
		scored++
		c := s.score(f, sl, runS, now)
		if c.score < best.score || c.score == best.score && sl.id < best.slot.id {
			best = c
		}
		return true
	}
	k := s.cfg.Candidates
	// Slots that will hold its models: twice as many for the largest
	// model, which costs most to load, as for each smaller one.
	for i, b := range s.models {
		n := k
		if i == 0 {
			n = 2 * k
		}
		s.probe(&b.avail, n, try)
	}
	// Open slots of hosts that cache its largest models.
	for _, b := range s.models[:min(2, len(s.models))] {
		items := b.holders.items
		if len(items) == 0 {
			continue
		}
		start := int(s.rot % uint64(len(items)))
		s.rot++
		for i := 0; i < min(len(items), s.cfg.HostProbes); i++ {
			h := items[(start+i)%len(items)]
			if h.open == 0 || !h.takes(kind) {
				continue
			}
			if sl := bestOpenSlot(h, need); sl != nil {
				try(sl)
			}
		}
	}
	// Open slots anywhere, on the least busy GPUs of each size that fits.
	for _, c := range f.classes {
		if c.cap > 0 && c.cap < need {
			continue
		}
		taken := 0
		for b := 0; b <= maxBucket && taken < k; b++ {
			taken += s.probe(&c.buckets[b], k-taken, try)
		}
	}
	// With no open slot that fits, any soon slot: the job starts as soon
	// as one frees, without waiting for the pass and the assignment that
	// would follow.
	if best.slot == nil {
		for _, c := range f.classes {
			if c.cap <= 0 || c.cap >= need {
				s.probe(&c.soon, k, try)
			}
		}
	}
	return best, scored, best.slot != nil
}

// probe offers up to k members of ss to try, starting at a rotating
// position so that successive jobs spread over the set, and gives up after
// 4k refusals. It returns how many try took.
func (s *Scheduler) probe(ss *slotSet, k int, try func(*slot) bool) int {
	n := len(ss.items)
	if n == 0 || k <= 0 {
		return 0
	}
	start := int(s.rot % uint64(n))
	s.rot++
	taken := 0
	for i := 0; i < n && taken < k && i < 4*k+taken; i++ {
		if try(ss.items[(start+i)%n]) {
			taken++
		}
	}
	return taken
}

// bestOpenSlot picks h's open slot that fits need on its least busy GPU,
// the emptiest first.
func bestOpenSlot(h *host, need int64) *slot {
	var best *slot
	for _, sl := range h.slots {
		if sl.status != statusOpen || sl.cap > 0 && sl.cap < need {
			continue
		}
		if best == nil || sl.gpu.busy < best.gpu.busy || sl.gpu.busy == best.gpu.busy && sl.used < best.used {
			best = sl
		}
	}
	return best
}

// score costs s.models on sl (see Scheduler).
func (s *Scheduler) score(f *Fleet, sl *slot, runS float64, now time.Time) candidate {
	c := candidate{slot: sl}
	if len(sl.jobs) > 0 {
		c.wait = f.remaining(sl, now)
	}
	h := sl.host
	var load float64
	var missing int64
	for _, b := range s.models {
		if sl.holds(b.id) {
			continue
		}
		load += f.loadSeconds(h, f.hostTier(h, b), b.size)
		missing += b.size
	}
	var evict float64
	if missing > 0 && sl.cap > 0 && sl.used+missing > sl.cap {
		used := sl.used
		for _, d := range sl.lru { // least recently used first
			if used+missing <= sl.cap && !h.comfy { // ComfyUI frees them all
				break
			}
			e := f.blobs[d]
			if slices.Contains(s.models, e) {
				continue
			}
			used -= e.size
			evict += f.evictValue(h, e, now)
		}
	}
	c.score = c.wait + load + s.cfg.ShareWeight*f.overlap(sl, c.wait+load, runS, now) + s.cfg.EvictWeight*evict
	return c
}

// overlap is how long a job that starts on sl in start seconds and runs
// runS would share its GPU with the jobs on the GPU's other slots: the
// time it and they would each lose to the other.
func (f *Fleet) overlap(sl *slot, start, runS float64, now time.Time) float64 {
	if sl.gpu.busy == 0 || sl.gpu.busy == 1 && len(sl.jobs) > 0 {
		return 0
	}
	var total float64
	for _, o := range sl.gpu.slots {
		if o != sl && len(o.jobs) > 0 {
			total += max(0, min(f.remaining(o, now)-start, runS))
		}
	}
	return total
}

// hostTier is where b comes from for a slot of h: h's own RAM or disk, a
// peer-serving host in its rack or elsewhere, or the origin.
func (f *Fleet) hostTier(h *host, b *blob) int {
	if t, ok := h.cachedTier(b.id); ok {
		return t
	}
	if h.peer && h.up {
		if h.rack >= 0 && b.racks[h.rack] > 0 {
			return tRack
		}
		if b.peers > 0 {
			return tPeer
		}
	}
	return tOrigin
}

// seconds is how long size bytes take to come from tier t into a worker.
func (h *host) seconds(t int, size int64) float64 {
	if t == tVRAM || size <= 0 {
		return 0
	}
	if h.bw[t] <= 0 {
		return math.Inf(1)
	}
	return float64(size) / h.bw[t]
}

// loadSeconds is h.seconds, but a read from h's disk waits for the disk
// reads already placed on h: they share the disk.
func (f *Fleet) loadSeconds(h *host, t int, size int64) float64 {
	if t == tDisk {
		return h.seconds(t, h.diskPending+size)
	}
	return h.seconds(t, size)
}

// evictValue is what unloading e from a slot of h is expected to cost:
// its load time back from h's best tier, times the chance it is wanted
// again soon where no other warm copy can serve it.
func (f *Fleet) evictValue(h *host, e *blob, now time.Time) float64 {
	copies := float64(e.avail.len())
	p := min(1, e.demandNow(now)/max(copies, 1))
	return p * h.seconds(f.hostTier(h, e), e.size)
}

// placement spells out the decision for j on c.slot: each model's tier
// and load time, the wait and the estimate.
func (s *Scheduler) placement(f *Fleet, j *proto.Job, c candidate, now time.Time) proto.Placement {
	return f.placementOn(j, c.slot, c.wait, now)
}

// placementOn is j's placement on sl after wait seconds: each model's tier
// there and its load time, and the estimated start.
func (f *Fleet) placementOn(j *proto.Job, sl *slot, wait float64, now time.Time) proto.Placement {
	h := sl.host
	p := proto.Placement{Host: h.id, GPU: sl.gpu.index, Slot: sl.index, QueueWaitS: round3(wait), PlacedAt: now.UTC()}
	load := 0.0
	for _, m := range j.Models {
		b := f.intern(m.Digest, m.Size)
		t := tVRAM
		if !sl.holds(b.id) {
			t = f.hostTier(h, b)
		}
		secs := f.loadSeconds(h, t, m.Size)
		load += secs
		p.Models = append(p.Models, proto.ModelPlacement{Name: m.Name, Digest: m.Digest, Tier: tierNames[t], Seconds: round3(secs), SizeByte: m.Size})
	}
	p.EstimateS = round3(wait + load)
	return p
}

// companions counts j's models as asked for together and returns what
// sl should warm after j: the models most often asked for with j's class
// that sl will not hold, as many as fit the room it will have.
func (s *Scheduler) companions(f *Fleet, j *proto.Job, sl *slot, now time.Time) []uint32 {
	if len(s.models) == 0 {
		return nil
	}
	class := s.models[0].id
	tg := s.together[class]
	if tg == nil {
		tg = make(map[uint32]*decaying)
		s.together[class] = tg
	}
	for _, b := range s.models[1:] {
		if tg[b.id] == nil {
			tg[b.id] = &decaying{}
		}
		tg[b.id].add(now, togetherHalfLife)
	}
	if s.cfg.WarmModels < 0 || sl.host.comfy {
		return nil
	}
	ranked := s.ranked(f, class, tg, now)
	// The room sl will have once j has loaded (its prediction has j).
	room := min(sl.cap-sl.used, s.cfg.WarmBytes)
	var out []uint32
	for _, b := range ranked {
		if len(out) >= s.cfg.WarmModels {
			break
		}
		if sl.holds(b.id) || b.size > room || slices.Contains(s.models, b) {
			continue
		}
		out = append(out, b.id)
		room -= b.size
	}
	return out
}

// ranked returns the models asked for with class, most often first, as
// of at most rankEvery ago: sorting them on every placement would cost
// more than the order changes.
func (s *Scheduler) ranked(f *Fleet, class uint32, tg map[uint32]*decaying, now time.Time) []*blob {
	r := s.rankings[class]
	if r != nil && now.Sub(r.at) < rankEvery {
		return r.list
	}
	if r == nil {
		r = &ranking{}
		s.rankings[class] = r
	}
	type cand struct {
		b *blob
		v float64
	}
	var cs []cand
	for d, c := range tg {
		if v := c.value(now, togetherHalfLife); v >= warmMinCount {
			cs = append(cs, cand{f.blobs[d], v})
		}
	}
	slices.SortFunc(cs, func(a, b cand) int { return cmp.Or(cmp.Compare(b.v, a.v), cmp.Compare(a.b.id, b.b.id)) })
	r.at, r.list = now, r.list[:0]
	for _, c := range cs {
		r.list = append(r.list, c.b)
	}
	return r.list
}

// ranking is a class's companions in order, as of at.
type ranking struct {
	at   time.Time
	list []*blob
}

// rankEvery is how often a class's companions are ranked again.
const rankEvery = 5 * time.Second

// togetherHalfLife is how fast the counts of models asked for together
// forget; warmMinCount is the count a model needs to be warmed: one ask
// within about a half-life.
const (
	togetherHalfLife = 10 * time.Minute
	warmMinCount     = 0.5
)

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
