package fleetsim

import (
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/hearth-gpu/hearth/coordinator/scheduler"
	"github.com/hearth-gpu/hearth/proto"
)

// tinySpec is one host with gpus GPUs of slots slots of slotGB each, no
// RAM tier, an empty disk, and round figures for every link.
func tinySpec(gpus, slots int, slotGB float64) Spec {
	return Spec{
		Hosts: 1, GPUsPerHost: gpus, SlotsPerGPU: slots, SlotBytes: int64(slotGB * 1e9), HostsPerRack: 1,
		RAMBytes: 0, DiskBytes: 1e12,
		Bandwidth: map[proto.Tier]float64{
			proto.TierRAM: 10e9, proto.TierDisk: 2e9, proto.TierRack: 1e9, proto.TierPeer: 1e9, proto.TierOrigin: 1e9,
		},
		OriginTotal: 1e9,
	}
}

// traceOf builds a trace: models by name and GB, jobs as (at, run, names).
func traceOf(models map[string]float64, jobs ...Job) *Trace {
	t := &Trace{}
	for _, name := range []string{"a", "b", "c"} {
		if gb, ok := models[name]; ok {
			t.Catalog = append(t.Catalog, Model{Name: name, Digest: digestOfName(name), Size: int64(gb * 1e9), Kind: KindCheckpoint, Family: FamilySDXL})
		}
	}
	for i := range jobs {
		jobs[i].ID = fmt.Sprintf("j%03d", i)
		jobs[i].Family = FamilySDXL
	}
	t.Jobs = jobs
	return t
}

func runWith(t *testing.T, name string, sp Spec, tr *Trace) (*Result, *sim) {
	t.Helper()
	var got *sim
	runHook = func(s *sim) { got = s }
	defer func() { runHook = nil }()
	r, err := Run(sp, tr, func(c scheduler.Clock) scheduler.Policy {
		p, err := NewPolicy(name, c, 1)
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return r, got
}

func closeTo(a, b float64) bool { return math.Abs(a-b) < 0.02 }

// One host, one model, jobs far apart: the first loads it from the origin
// and every later one finds it in the slot.
func TestOneHostOneModel(t *testing.T) {
	tr := traceOf(map[string]float64{"a": 4},
		Job{At: 0, RunS: 5, Models: []string{"a"}},
		Job{At: 100, RunS: 5, Models: []string{"a"}},
		Job{At: 200, RunS: 5, Models: []string{"a"}},
		Job{At: 300, RunS: 5, Models: []string{"a"}},
	)
	for _, policy := range PolicyNames {
		t.Run(policy, func(t *testing.T) {
			r, s := runWith(t, policy, tinySpec(1, 1, 10), tr)
			if r.Finished != 4 || r.WarmRate != 0.75 || r.OriginBytes != 4e9 {
				t.Fatalf("finished %d, warm %.2f, origin bytes %d; want 4, 0.75 and one 4 GB download", r.Finished, r.WarmRate, r.OriginBytes)
			}
			first := s.jobs[0]
			// 4 GB at 1 GB/s, after the 10 ms a pass waits; SwarmUI
			// first waits 1.5 s for a backend with the model, and the
			// pass after that comes with the 1 s tick.
			want := 4.01
			if policy == "swarmui" {
				want = 6
			}
			if !closeTo(first.runStart-first.arrive, want) || !closeTo(first.finish-first.runStart, 5) {
				t.Fatalf("first job started after %.3f s and ran %.3f s; want %.2f and 5", first.runStart-first.arrive, first.finish-first.runStart, want)
			}
			if wb := WarmBound(tr, 0); wb != 0.75 {
				t.Fatalf("bound %.2f, want 0.75: only the first job must load", wb)
			}
		})
	}
}

// Two models that cannot share a slot, alternating: every job must load
// its model again, the first time from the origin and then from the disk
// the first download left it on.
func TestTwoModelsThatCannotShareASlot(t *testing.T) {
	tr := traceOf(map[string]float64{"a": 6, "b": 6},
		Job{At: 0, RunS: 1, Models: []string{"a"}},
		Job{At: 50, RunS: 1, Models: []string{"b"}},
		Job{At: 100, RunS: 1, Models: []string{"a"}},
		Job{At: 150, RunS: 1, Models: []string{"b"}},
	)
	r, s := runWith(t, "hearth", tinySpec(1, 1, 10), tr)
	if r.WarmRate != 0 || r.OriginBytes != 12e9 {
		t.Fatalf("warm %.2f, origin bytes %d; want no warm start and each model downloaded once", r.WarmRate, r.OriginBytes)
	}
	third := s.jobs[2]
	if !closeTo(third.runStart-third.loadStart, 3) { // 6 GB from a 2 GB/s disk
		t.Fatalf("third job loaded in %.3f s, want 3 (from disk)", third.runStart-third.loadStart)
	}
	if wb := WarmBound(tr, 0); wb != 0.5 {
		t.Fatalf("bound %.2f, want 0.5: the bound ignores capacity", wb)
	}
}

// A burst larger than the fleet: ten 10 s jobs at once on one GPU of two
// slots. Every job finishes; the GPU's compute, shared, is the limit:
// 100 s of work after the first load.
func TestBurstLargerThanTheFleet(t *testing.T) {
	var jobs []Job
	for range 10 {
		jobs = append(jobs, Job{At: 0, RunS: 10, Models: []string{"a"}})
	}
	tr := traceOf(map[string]float64{"a": 1}, jobs...)
	for _, policy := range PolicyNames {
		t.Run(policy, func(t *testing.T) {
			r, s := runWith(t, policy, tinySpec(1, 2, 10), tr)
			if r.Finished != 10 {
				t.Fatalf("%d of 10 jobs finished", r.Finished)
			}
			last := 0.0
			for _, j := range s.jobs {
				last = max(last, j.finish)
			}
			// The two slots each load the 1 GB model once (from the
			// origin, shared, or behind the first), so compute starts
			// within a few seconds and then runs 100 s flat out.
			if last < 100 || last > 105 {
				t.Fatalf("last job finished at %.2f s, want 100 s of compute plus the first loads", last)
			}
			if r.GPUBusy != 0 {
				t.Fatalf("GPU busy %.2f with a window of zero length (all arrivals at 0)", r.GPUBusy)
			}
		})
	}
}

func TestRunIsDeterministic(t *testing.T) {
	w := StandardWorkloads(20, 120, 7)[1]
	tr, err := Generate(w)
	if err != nil {
		t.Fatal(err)
	}
	sp := DefaultSpec(8)
	sp.Warmup = 12
	for _, policy := range []string{"hearth", "random", "swarmui"} {
		a, _ := runWith(t, policy, sp, tr)
		b, _ := runWith(t, policy, sp, tr)
		a.SchedUSPerJob, b.SchedUSPerJob = 0, 0
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: two runs differ:\n%+v\n%+v", policy, a, b)
		}
	}
}

// The origin shares its bandwidth: two hosts downloading different models
// at once each get half, capped by their own link.
func TestOriginIsShared(t *testing.T) {
	sp := tinySpec(1, 1, 10)
	sp.Hosts, sp.HostsPerRack, sp.PeerFetch = 2, 1, false
	tr := traceOf(map[string]float64{"a": 2, "b": 2},
		Job{At: 0, RunS: 1, Models: []string{"a"}},
		Job{At: 0, RunS: 1, Models: []string{"b"}},
	)
	_, s := runWith(t, "least-loaded", sp, tr)
	for _, j := range s.jobs {
		if j.slot.host == s.jobs[0].slot.host && j != s.jobs[0] {
			t.Fatalf("both jobs on one host; want one each")
		}
		if load := j.runStart - j.loadStart; !closeTo(load, 4) { // 2 GB at 0.5 GB/s
			t.Fatalf("job %s loaded in %.3f s, want 4 (half the origin each)", j.tj.ID, load)
		}
	}
}

// Hosts that want a model the origin is sending share the download: the
// origin serves one copy.
func TestConcurrentDownloadsShareTheOrigin(t *testing.T) {
	sp := tinySpec(1, 1, 10)
	sp.Hosts, sp.HostsPerRack, sp.PeerFetch = 4, 4, true
	var jobs []Job
	for range 4 {
		jobs = append(jobs, Job{At: 0, RunS: 1, Models: []string{"a"}})
	}
	r, _ := runWith(t, "least-loaded", sp, traceOf(map[string]float64{"a": 2}, jobs...))
	if r.OriginBytes != 2e9 || r.PeerBytes != 6e9 || r.Finished != 4 {
		t.Fatalf("origin %d bytes, peers %d, finished %d; want one copy from the origin and three from peers", r.OriginBytes, r.PeerBytes, r.Finished)
	}
}

func TestWarmBound(t *testing.T) {
	tr := traceOf(map[string]float64{"a": 1, "b": 1},
		Job{At: 0, RunS: 1, Models: []string{"a"}},
		Job{At: 1, RunS: 1, Models: []string{"a"}},
		Job{At: 2, RunS: 1, Models: []string{"a", "b"}},
		Job{At: 3, RunS: 1, Models: []string{"b"}},
	)
	if got := WarmBound(tr, 0); got != 0.5 {
		t.Fatalf("bound %.2f, want 0.5 (jobs 1 and 3 can be warm)", got)
	}
	if got := WarmBound(tr, 1.5); got != 0.5 {
		t.Fatalf("bound after a warm-up of 1.5 s: %.2f, want 0.5 (job 2 cold, job 3 warm)", got)
	}
}
