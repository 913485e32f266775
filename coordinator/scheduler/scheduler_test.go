package scheduler

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

const sdxl = "checkpoints/sdxl.safetensors"

func near(a, b float64) bool { return math.Abs(a-b) < 1e-3 }

func TestPlacesByTier(t *testing.T) {
	for _, tc := range []struct {
		name     string
		h1, h2   proto.Heartbeat
		want     string
		wantTier proto.Tier
		wantEst  float64
	}{
		{
			name:     "resident in h2 slot 1",
			h1:       proto.Heartbeat{HostID: "h1"},
			h2:       proto.Heartbeat{HostID: "h2", Slots: []proto.SlotState{{GPU: 0, Slot: 1, Resident: residentOf(sdxl)}}},
			want:     "h2/0/1",
			wantTier: proto.TierVRAM, wantEst: 0,
		},
		{
			name:     "on h1's disk only",
			h1:       proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{cached(proto.TierDisk, sdxl, 6.9)}},
			h2:       proto.Heartbeat{HostID: "h2"},
			want:     "h1/0/0",
			wantTier: proto.TierDisk, wantEst: 6.9e9 / 1.5e9,
		},
		{
			name:     "ram on h2 beats disk on h1",
			h1:       proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{cached(proto.TierDisk, sdxl, 6.9)}},
			h2:       proto.Heartbeat{HostID: "h2", Cache: []proto.CachedBlob{cached(proto.TierDisk, sdxl, 6.9), cached(proto.TierRAM, sdxl, 6.9)}},
			want:     "h2/0/0",
			wantTier: proto.TierRAM, wantEst: 6.9e9 / 4.9e9,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.host("h1", 1, 2, 20, nil)
			h.host("h2", 1, 2, 20, nil)
			h.beat(tc.h1)
			h.beat(tc.h2)
			j := h.submit(sdxl, 6.9)
			h.pass(New(Config{Clock: h.clock}))
			if where(j) != tc.want {
				t.Fatalf("placed on %s, want %s", where(j), tc.want)
			}
			m := j.Placement.Models[0]
			if m.Tier != tc.wantTier || !near(m.Seconds, tc.wantEst) || !near(j.Placement.EstimateS, tc.wantEst) || j.Placement.QueueWaitS != 0 {
				t.Fatalf("placement %+v, want tier %s estimate %v", j.Placement, tc.wantTier, tc.wantEst)
			}
		})
	}
}

func TestNothingCachedGoesToTheOriginOnAnIdleGPU(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 2, 2, 20, nil)
	s := New(Config{Clock: h.clock})
	// A job running on GPU 0 slot 0 makes GPU 0 busy for the next 5 s
	// (the default run time), well past the second job's load.
	first := h.submit("a", 0.1)
	h.pass(s)
	h.run(first)
	second := h.submit("b", 0.1)
	h.pass(s)
	if first.Placement.GPU == second.Placement.GPU {
		t.Fatalf("both jobs on GPU %d (%s, %s); want the second on the idle GPU", first.Placement.GPU, where(first), where(second))
	}
	if tier := second.Placement.Models[0].Tier; tier != proto.TierOrigin {
		t.Fatalf("second job's model from %s, want origin", tier)
	}
}

// The share term: a job that would have a GPU to itself waits less than
// one that shares, so with all of one GPU's slots free and the other GPU
// busy, cold jobs spread before they stack.
func TestJobsSpreadOverGPUsBeforeSharingOne(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 4, 4, 20, nil)
	s := New(Config{Clock: h.clock})
	var jobs []*proto.Job
	for i := 0; i < 4; i++ {
		jobs = append(jobs, h.submit("m"+string(rune('a'+i)), 1.0))
	}
	h.pass(s)
	gpus := map[int]bool{}
	for _, j := range jobs {
		gpus[j.Placement.GPU] = true
	}
	if len(gpus) != 4 {
		t.Fatalf("4 jobs on GPUs %v, want one per GPU", gpus)
	}
}

// Late binding: a slot with two jobs takes no third; the job waits in the
// queue and goes wherever a slot frees first.
func TestLateBindingWaitsForAFreeSlot(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 1, 20, nil)
	s := New(Config{Clock: h.clock})
	a := h.submit(sdxl, 6.9)
	b := h.submit(sdxl, 6.9)
	c := h.submit(sdxl, 6.9)
	h.pass(s)
	if where(a) != "h1/0/0" || where(b) != "h1/0/0" || where(c) != "queued" {
		t.Fatalf("placed %s, %s, %s; want two on the slot and the third queued", where(a), where(b), where(c))
	}
	if b.Placement.Models[0].Tier != proto.TierVRAM || b.Placement.QueueWaitS <= 0 {
		t.Fatalf("second job %+v, want it warm behind the first", b.Placement)
	}
	if st := h.pass(s); !st.Idle {
		t.Fatalf("a pass with nothing changed did %+v, want it idle", st)
	}
	// A second host comes up; the waiting job takes its slot at once.
	h.host("h2", 1, 1, 20, nil)
	h.pass(s)
	if where(c) != "h2/0/0" {
		t.Fatalf("third job %s once h2 is up, want h2/0/0", where(c))
	}
}

func TestSlotResidencyIsBoundedByItsCapacity(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 1, 10, nil)
	h.beat(proto.Heartbeat{HostID: "h1", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: residentOf("a")}}})
	s := New(Config{Clock: h.clock})
	h.fleet.intern(digestOf("a"), 6e9)
	b := h.submit("b", 6.0)
	h.pass(s)
	h.run(b)
	h.finish(b, 3)
	// The worker had to unload a to load b: a slot of 10 GB cannot hold
	// both, so a is no longer warm anywhere.
	a := h.submit("a", 6.0)
	h.pass(s)
	if tier := a.Placement.Models[0].Tier; tier != proto.TierOrigin {
		t.Fatalf("a placed from %s, want origin: the 10 GB slot evicted it to load b", tier)
	}
	sl := h.fleet.hosts["h1"].slots[0]
	if sl.used > sl.cap {
		t.Fatalf("slot predicted to hold %d bytes in %d", sl.used, sl.cap)
	}
}

// The evict term: a cold job goes to an empty slot rather than push out a
// model other jobs keep asking for.
func TestColdJobsSpareWarmModelsInDemand(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 2, 10, nil)
	s := New(Config{Clock: h.clock})
	// Slot 0 holds the popular model; demand for it is recent.
	for i := 0; i < 3; i++ {
		j := h.submit("popular", 6.0)
		h.pass(s)
		h.run(j)
		h.finish(j, 3)
	}
	if sl := h.fleet.hosts["h1"].slotAt(0, 0); !sl.holds(h.fleet.ids[digestOf("popular")]) {
		t.Fatalf("slot 0 does not hold the popular model")
	}
	other := h.submit("other", 6.0)
	h.pass(s)
	if where(other) != "h1/0/1" {
		t.Fatalf("cold job on %s, want the empty slot h1/0/1", where(other))
	}
}

func TestPeerTiers(t *testing.T) {
	h := newHarness(t)
	h.host("holder", 1, 1, 20, map[string]string{"rack": "r1"})
	h.host("elsewhere", 1, 1, 20, map[string]string{"rack": "r2"})
	h.host("same-rack", 1, 1, 20, map[string]string{"rack": "r1"})
	h.host("no-peers", 1, 1, 20, nil)
	// The holder drains (it still serves its blobs) and has the model on disk.
	h.beat(proto.Heartbeat{HostID: "holder", Draining: true, Cache: []proto.CachedBlob{cached(proto.TierDisk, sdxl, 6.9)}})
	j := h.submit(sdxl, 6.9)
	h.pass(New(Config{Clock: h.clock}))
	if where(j) != "same-rack/0/0" || j.Placement.Models[0].Tier != proto.TierRack {
		t.Fatalf("placed on %s from %s, want same-rack from the rack tier", where(j), j.Placement.Models[0].Tier)
	}
	f := h.fleet
	b := f.blobs[f.ids[digestOf(sdxl)]]
	for host, want := range map[string]int{"elsewhere": tPeer, "no-peers": tOrigin, "holder": tDisk} {
		if got := f.hostTier(f.hosts[host], b); got != want {
			t.Errorf("tier on %s = %s, want %s", host, tierNames[got], tierNames[want])
		}
	}
}

func TestSilentDrainingDegradedAndBlockedTakeNothing(t *testing.T) {
	h := newHarness(t)
	s := New(Config{Clock: h.clock})
	h.host("silent", 1, 1, 20, nil)
	h.advance(11 * time.Second) // past the grace
	h.host("draining", 1, 1, 20, nil)
	h.beat(proto.Heartbeat{HostID: "draining", Draining: true})
	h.host("degraded", 1, 1, 20, nil)
	h.beat(proto.Heartbeat{HostID: "degraded", Degraded: "GPU 0 at 90 °C"})
	h.host("blocked", 1, 2, 20, nil)
	h.beat(proto.Heartbeat{HostID: "blocked", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Blocked: "foreign process"}}})
	var jobs []*proto.Job
	for i := 0; i < 3; i++ {
		jobs = append(jobs, h.submit("m", 1.0))
	}
	h.pass(s)
	if where(jobs[0]) != "blocked/0/1" || where(jobs[1]) != "blocked/0/1" || where(jobs[2]) != "queued" {
		t.Fatalf("placed %s %s %s; want two on the one slot in service and one queued", where(jobs[0]), where(jobs[1]), where(jobs[2]))
	}
}

func TestOversizedAndForeignKindsStayQueued(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 2, 1, nil)
	h.fleet.SetHost(&proto.Host{ID: "workers", Kinds: []string{"worker"}, GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 100e9}}})
	h.beat(proto.Heartbeat{HostID: "workers"})
	big := h.submit("big", 2.0)
	small := h.submit("small", 0.5)
	h.pass(New(Config{Clock: h.clock}))
	if where(big) != "queued" || where(small) != "h1/0/0" {
		t.Fatalf("big on %s, small on %s; want big queued (no workflow host fits it) and small on h1", where(big), where(small))
	}
}

func TestRefusedPlacementsAreTakenBack(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 1, 20, nil)
	s := New(Config{Clock: h.clock})
	a := h.submit("a", 1.0)
	h.refuse = map[string]error{a.ID: errors.New("cancelled meanwhile")}
	st := h.pass(s)
	if st.Placed != 0 || len(h.fleet.jobs) != 0 || h.fleet.openCount != 1 {
		t.Fatalf("after a refused plan: %+v, %d jobs in the fleet, %d open slots; want none placed and the slot open", st, len(h.fleet.jobs), h.fleet.openCount)
	}
	h.refuse = nil
	if st := h.pass(s); st.Placed != 1 {
		t.Fatalf("next pass %+v, want the job placed", st)
	}
}

func TestRunTimesAreLearnedPerClass(t *testing.T) {
	h := newHarness(t)
	h.host("h1", 1, 1, 40, nil)
	s := New(Config{Clock: h.clock})
	for _, c := range []struct {
		model string
		runS  float64
	}{{"flux", 30}, {"sd15", 3}} {
		j := h.submit(c.model, 1.0)
		h.pass(s)
		h.run(j)
		h.finish(j, c.runS)
	}
	f := h.fleet
	if got := f.est.runS(f.ids[digestOf("flux")]); got != 30 {
		t.Fatalf("flux estimate %v, want 30", got)
	}
	// A job behind a running flux job waits about its run time.
	j := h.submit("flux", 1.0)
	h.pass(s)
	h.run(j)
	h.advance(10 * time.Second)
	next := h.submit("flux", 1.0)
	h.pass(s)
	if !near(next.Placement.QueueWaitS, 20) {
		t.Fatalf("queue wait %v behind a flux job 10 s into its run, want 20", next.Placement.QueueWaitS)
	}
}

// A ComfyUI server frees every model when the next do not fit, so a slot
// that had to make room holds only the new job's models afterwards.
func TestComfyUISlotsFreeEverythingToMakeRoom(t *testing.T) {
	h := newHarness(t)
	h.fleet.SetHost(&proto.Host{ID: "comfy", Runner: "comfyui", GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 10e9}}})
	h.beat(proto.Heartbeat{HostID: "comfy", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: residentOf("lora", "a")}}})
	h.fleet.intern(digestOf("a"), 6e9)
	h.fleet.intern(digestOf("lora"), 0.1e9)
	h.submit("b", 6.0)
	h.pass(New(Config{Clock: h.clock}))
	sl := h.fleet.hosts["comfy"].slots[0]
	if got := sl.lru; len(got) != 1 || got[0] != h.fleet.ids[digestOf("b")] {
		t.Fatalf("predicted residency %v after b on a ComfyUI slot, want only b (the server frees all)", got)
	}
}

// A job of a class that asked for a LoRA teaches the scheduler to have a
// slot warm it after the next such job, where the runner can load ahead
// of a job (a worker) and not where it cannot (ComfyUI).
func TestPlacementsAdviseWarmingCompanions(t *testing.T) {
	for _, runner := range []string{"worker", "comfyui"} {
		t.Run(runner, func(t *testing.T) {
			h := newHarness(t)
			h.fleet.SetHost(&proto.Host{ID: "h1", Runner: runner, GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 20e9}}})
			h.beat(proto.Heartbeat{HostID: "h1"})
			s := New(Config{Clock: h.clock})
			{
				j := h.submit(sdxl, 6.9, "loras/detail", 0.2)
				h.pass(s)
				h.run(j)
				h.finish(j, 8)
				// The worker unloads the LoRA meanwhile.
				h.beat(proto.Heartbeat{HostID: "h1", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: residentOf(sdxl)}}})
			}
			// Counts decay, but a minute does not make them forget.
			h.advance(time.Minute)
			h.beat(proto.Heartbeat{HostID: "h1", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: residentOf(sdxl)}}})
			h.submit(sdxl, 6.9)
			h.pass(s)
			warm := h.plans[len(h.plans)-1][0].Warm
			switch {
			case runner == "worker" && (len(warm) != 1 || warm[0] != digestOf("loras/detail")):
				t.Fatalf("warm advice %v, want the LoRA asked for with this checkpoint", warm)
			case runner == "comfyui" && len(warm) != 0:
				t.Fatalf("warm advice %v for a ComfyUI slot, which loads only inside a prompt", warm)
			}
			sl := h.fleet.hosts["h1"].slots[0]
			if holds := sl.holds(h.fleet.ids[digestOf("loras/detail")]); holds != (runner == "worker") {
				t.Fatalf("slot predicted to hold the LoRA: %v", holds)
			}
		})
	}
}
