package scheduler

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// benchFleet is a synthetic fleet as the issue measured v1 on: hosts of 8
// GPUs × 4 slots of 20 GiB in racks of 40, 200 cached blobs each out of a
// 500-model catalog, one or two models resident per slot, half the slots
// running a job; and a queue of jobs naming 1–3 models by Zipf popularity.
type benchFleet struct {
	hosts   []*proto.Host
	beats   map[string]proto.Heartbeat
	running []*proto.Job
	queue   []*proto.Job
}

func newBenchFleet(nHosts, nQueued int, seed uint64, peers bool) *benchFleet {
	r := rand.New(rand.NewPCG(seed, 1))
	type model struct {
		digest proto.Digest
		size   int64
	}
	catalog := make([]model, 500)
	for i := range catalog {
		// Log-uniform from 50 MB (a LoRA) to 12 GB (a large checkpoint).
		size := int64(50e6 * math.Pow(240, r.Float64()))
		catalog[i] = model{digestOf(fmt.Sprintf("model-%03d", i)), size}
	}
	zipf := newBenchZipf(len(catalog), 1.0)
	pick := func() model { return catalog[zipf.rank(r)] }
	refs := func() []proto.ModelRef {
		var out []proto.ModelRef
		for n := 1 + r.IntN(3); len(out) < n; {
			m := pick()
			out = append(out, proto.ModelRef{Name: string(m.digest[7:19]), Digest: m.digest, Size: m.size})
		}
		return out
	}
	bf := &benchFleet{beats: make(map[string]proto.Heartbeat)}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range nHosts {
		h := &proto.Host{ID: fmt.Sprintf("host-%05d", i), PeerFetch: peers,
			Labels: map[string]string{"rack": fmt.Sprintf("r%03d", i/40)}}
		b := proto.Heartbeat{HostID: h.ID}
		for g := range 8 {
			h.GPUs = append(h.GPUs, proto.GPU{Index: g, Slots: 4, SlotBytes: 20 << 30})
			for s := range 4 {
				st := proto.SlotState{GPU: g, Slot: s}
				for range 1 + r.IntN(2) {
					st.Resident = append(st.Resident, pick().digest)
				}
				b.Slots = append(b.Slots, st)
				if r.IntN(2) == 0 {
					j := &proto.Job{ID: fmt.Sprintf("run-%s-%d-%d", h.ID, g, s), State: proto.JobRunning, Models: refs(),
						Spec: proto.JobSpec{Workflow: []byte(`{}`)}, SubmittedAt: t0, StartedAt: &t0}
					j.Placement = &proto.Placement{Host: h.ID, GPU: g, Slot: s, PlacedAt: t0, Epoch: uint64(len(bf.running) + 1)}
					bf.running = append(bf.running, j)
				}
			}
		}
		for _, k := range r.Perm(len(catalog))[:200] {
			tier := proto.TierDisk
			if r.IntN(5) == 0 {
				tier = proto.TierRAM
			}
			b.Cache = append(b.Cache, proto.CachedBlob{Digest: catalog[k].digest, Size: catalog[k].size, Tier: tier})
		}
		bf.hosts = append(bf.hosts, h)
		bf.beats[h.ID] = b
	}
	for i := range nQueued {
		bf.queue = append(bf.queue, &proto.Job{ID: fmt.Sprintf("q%05d", i), State: proto.JobQueued, Models: refs(),
			Spec: proto.JobSpec{Workflow: []byte(`{}`)}, SubmittedAt: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	return bf
}

func (bf *benchFleet) fleet(now time.Time) *Fleet {
	f := NewFleet(FleetConfig{Grace: time.Hour, DefaultBandwidth: testBandwidth, DefaultRunS: 5})
	for _, h := range bf.hosts {
		f.SetHost(h)
		b := bf.beats[h.ID]
		f.Heartbeat(&b, now)
	}
	for _, j := range bf.running {
		f.SetJob(j)
	}
	return f
}

type acceptAll struct{}

func (acceptAll) SubmitPlan(plan []Placement) ([]error, error) { return make([]error, len(plan)), nil }

type benchState struct {
	f     *Fleet
	queue []*proto.Job
}

func (b benchState) Queued() []*proto.Job { return append([]*proto.Job(nil), b.queue...) }
func (b benchState) Fleet() *Fleet        { return b.f }

// BenchmarkPlacement times one scheduling pass over 1,000 queued jobs on
// fleets of 100, 1,000 and 10,000 hosts, and the v1 scan on the same fleet
// beside it (on fewer jobs at the larger sizes: each costs it up to a
// tenth of a second), and prints both per job. Hosts do not fetch from
// peers, as in the measurement of v1: with peers, v1 walks every
// holder of a model for every slot, seconds per job at 10,000 hosts; the
// last case times v2 with peers.
func BenchmarkPlacement(b *testing.B) {
	for _, c := range []struct {
		hosts int
		peers bool
	}{{100, false}, {1000, false}, {10000, false}, {10000, true}} {
		n := c.hosts
		b.Run(fmt.Sprintf("hosts=%d,peers=%v", n, c.peers), func(b *testing.B) {
			bf := newBenchFleet(n, 1000, 1, c.peers)
			now := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
			var v2 time.Duration
			placed := 0
			for range b.N {
				b.StopTimer()
				f := bf.fleet(now)
				s := New(Config{Clock: &fakeClock{now: now}})
				b.StartTimer()
				start := time.Now()
				st, err := s.Pass(benchState{f, bf.queue}, acceptAll{})
				v2 += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				placed = st.Placed
			}
			b.StopTimer()
			v2PerJob := float64(v2.Microseconds()) / float64(b.N*len(bf.queue))
			b.ReportMetric(v2PerJob, "µs/job")
			if c.peers {
				fmt.Printf("placement, %d hosts × 8 GPUs × 4 slots fetching from peers, 1000 queued (%d placed): v2 %.1f µs/job\n", n, placed, v2PerJob)
				return
			}
			// The v1 scan on the same hosts, heartbeats and running jobs.
			v1Jobs := len(bf.queue)
			if n >= 10000 {
				v1Jobs = 50
			} else if n >= 1000 {
				v1Jobs = 200
			}
			v1 := &v1Scan{hosts: bf.hosts, beats: bf.beats, bw: testBandwidth, avgRunS: 5}
			start := time.Now()
			items := v1.pass(bf.running, append([]*proto.Job(nil), bf.queue[:v1Jobs]...), now)
			v1PerJob := float64(time.Since(start).Microseconds()) / float64(v1Jobs)
			b.ReportMetric(v1PerJob, "v1-µs/job")
			fmt.Printf("placement, %d hosts × 8 GPUs × 4 slots, 1000 queued (%d placed): v2 %.1f µs/job; v1 scan %.0f µs/job over %d jobs (%d placed) — %.0f× faster\n",
				n, placed, v2PerJob, v1PerJob, v1Jobs, len(items), v1PerJob/max(v2PerJob, 0.001))
		})
	}
}

// benchZipf draws ranks with weight 1/(r+1)^s.
type benchZipf struct{ cum []float64 }

func newBenchZipf(n int, s float64) *benchZipf {
	z := &benchZipf{cum: make([]float64, n)}
	total := 0.0
	for i := range n {
		total += 1 / math.Pow(float64(i+1), s)
		z.cum[i] = total
	}
	for i := range z.cum {
		z.cum[i] /= total
	}
	return z
}

func (z *benchZipf) rank(r *rand.Rand) int {
	u := r.Float64()
	lo, hi := 0, len(z.cum)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if z.cum[mid] < u {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}
