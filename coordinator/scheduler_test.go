package coordinator

import (
	"context"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// In these tests the test plays the agent's side: hosts register and
// heartbeat through the real agent API (client.Register, client.Heartbeat),
// reporting slots, resident digests and cache contents as an agent would.
// Only the GPUs behind them are imaginary.

const (
	modelA     = "checkpoints/a.safetensors"
	modelASize = 100e6 // 100 MB
)

// twoSlotGPU is one GPU carved into two 1 GiB slots.
var twoSlotGPU = []proto.GPU{{Index: 0, Slots: 2, SlotBytes: 1 << 30}}

func registerHost(t *testing.T, api *client.Client, id string, gpus []proto.GPU, bw map[proto.Tier]float64) {
	t.Helper()
	h := proto.Host{ID: id, Addr: "127.0.0.1:7710", DeviceKind: "simulated", GPUs: gpus, Bandwidth: bw}
	if err := api.Register(context.Background(), h); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
}

func heartbeat(t *testing.T, api *client.Client, b proto.Heartbeat) {
	t.Helper()
	b.Time = time.Now()
	if _, err := api.Heartbeat(context.Background(), b); err != nil {
		t.Fatalf("heartbeat %s: %v", b.HostID, err)
	}
}

func submitWorkflow(t *testing.T, api *client.Client, ckpt string, priority int) *proto.Job {
	t.Helper()
	body := `{"priority": ` + strconv.Itoa(priority) + `, "workflow": {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "` + ckpt + `"}}}}`
	j, err := api.SubmitRaw(context.Background(), []byte(body))
	if err != nil {
		t.Fatalf("submit %s: %v", ckpt, err)
	}
	return j
}

// waitForPlacement polls the job until the scheduler has placed it, for up
// to 10 s, and returns it.
func waitForPlacement(t *testing.T, api *client.Client, id string) *proto.Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := api.Job(context.Background(), id)
		if err != nil {
			t.Fatalf("get job %s: %v", id, err)
		}
		if j.Placement != nil {
			if j.State != proto.JobPlaced {
				t.Fatalf("job %s has a placement but state %s", id, j.State)
			}
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s still %s after 10 s; want it placed", id, j.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// onlyModel returns the placement's single model, failing otherwise.
func onlyModel(t *testing.T, j *proto.Job) proto.ModelPlacement {
	t.Helper()
	if len(j.Placement.Models) != 1 {
		t.Fatalf("job %s placement models %+v, want exactly one", j.ID, j.Placement.Models)
	}
	return j.Placement.Models[0]
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-3 }

func TestSchedulerPlacesByTier(t *testing.T) {
	digest := testDigest(modelA)
	cases := []struct {
		name     string
		h1, h2   proto.Heartbeat
		h1BW     map[proto.Tier]float64
		wantHost string
		wantSlot int
		wantTier proto.Tier
		wantEst  float64
	}{
		{
			name:     "resident in h2 slot 1",
			h1:       proto.Heartbeat{HostID: "h1"},
			h2:       proto.Heartbeat{HostID: "h2", Slots: []proto.SlotState{{GPU: 0, Slot: 0}, {GPU: 0, Slot: 1, Resident: []proto.Digest{digest}}}},
			wantHost: "h2", wantSlot: 1, wantTier: proto.TierVRAM, wantEst: 0,
		},
		{
			name:     "in h1 disk cache only",
			h1:       proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{{Digest: digest, Size: modelASize, Tier: proto.TierDisk}}},
			h2:       proto.Heartbeat{HostID: "h2"},
			wantHost: "h1", wantSlot: 0, wantTier: proto.TierDisk, wantEst: modelASize / DefaultBandwidths[proto.TierDisk],
		},
		{
			name:     "ram in h2 beats disk in h1",
			h1:       proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{{Digest: digest, Size: modelASize, Tier: proto.TierDisk}}},
			h2:       proto.Heartbeat{HostID: "h2", Cache: []proto.CachedBlob{{Digest: digest, Size: modelASize, Tier: proto.TierDisk}, {Digest: digest, Size: modelASize, Tier: proto.TierRAM}}},
			wantHost: "h2", wantSlot: 0, wantTier: proto.TierRAM, wantEst: modelASize / DefaultBandwidths[proto.TierRAM],
		},
		{
			name:     "nothing cached anywhere",
			h1:       proto.Heartbeat{HostID: "h1"},
			h2:       proto.Heartbeat{HostID: "h2"},
			wantHost: "h1", wantSlot: 0, wantTier: proto.TierOrigin, wantEst: modelASize / DefaultBandwidths[proto.TierOrigin],
		},
		{
			name:     "host-reported origin bandwidth beats the default",
			h1:       proto.Heartbeat{HostID: "h1"},
			h2:       proto.Heartbeat{HostID: "h2"},
			h1BW:     map[proto.Tier]float64{proto.TierOrigin: 1e9},
			wantHost: "h1", wantSlot: 0, wantTier: proto.TierOrigin, wantEst: modelASize / 1e9,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, api := newTestServer(t, nil)
			putTestModel(t, api, modelA, modelASize)
			registerHost(t, api, "h1", twoSlotGPU, tc.h1BW)
			registerHost(t, api, "h2", twoSlotGPU, nil)
			heartbeat(t, api, tc.h1)
			heartbeat(t, api, tc.h2)

			j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
			p := j.Placement
			if p.Host != tc.wantHost || p.GPU != 0 || p.Slot != tc.wantSlot {
				t.Fatalf("placed on %s/gpu%d/slot%d, want %s/gpu0/slot%d", p.Host, p.GPU, p.Slot, tc.wantHost, tc.wantSlot)
			}
			m := onlyModel(t, j)
			if m.Name != modelA || m.Digest != digest || m.SizeByte != modelASize || m.Tier != tc.wantTier {
				t.Fatalf("model placement %+v, want %s in tier %s", m, modelA, tc.wantTier)
			}
			if !near(p.EstimateS, tc.wantEst) || !near(m.Seconds, tc.wantEst) || p.QueueWaitS != 0 {
				t.Fatalf("estimate_s %v, model seconds %v, queue_wait_s %v; want %v, %v, 0", p.EstimateS, m.Seconds, p.QueueWaitS, tc.wantEst, tc.wantEst)
			}
			if j.Attempts != 1 || p.Epoch == 0 || proto.EventIndex(p.Epoch) != j.Index || p.PlacedAt.IsZero() {
				t.Fatalf("placed job attempts %d epoch %d index %d placed_at %v", j.Attempts, p.Epoch, j.Index, p.PlacedAt)
			}
		})
	}
}

func TestSchedulerUsesHostBandwidth(t *testing.T) {
	_, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	// h1 says its origin link is slower than the default.
	registerHost(t, api, "h1", twoSlotGPU, map[proto.Tier]float64{proto.TierOrigin: 1e8})
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})

	j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	if m := onlyModel(t, j); j.Placement.Host != "h1" || m.Tier != proto.TierOrigin || !near(j.Placement.EstimateS, modelASize/1e8) {
		t.Fatalf("placement %+v, want h1 from origin in %v s (not the default %v s)", j.Placement, modelASize/1e8, modelASize/DefaultBandwidths[proto.TierOrigin])
	}

	// h2 reports no bandwidth, so the default applies, and its faster
	// estimate wins the next job over h1's free slot.
	registerHost(t, api, "h2", twoSlotGPU, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h2"})
	j2 := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	want := modelASize / DefaultBandwidths[proto.TierOrigin]
	if m := onlyModel(t, j2); j2.Placement.Host != "h2" || m.Tier != proto.TierOrigin || !near(j2.Placement.EstimateS, want) {
		t.Fatalf("second placement %+v, want h2 from origin in %v s", j2.Placement, want)
	}
}

func TestSchedulerHigherPriorityFirst(t *testing.T) {
	_, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	// No host is alive yet, so both jobs wait in the queue.
	low := submitWorkflow(t, api, "a.safetensors", -10)
	high := submitWorkflow(t, api, "a.safetensors", 10)
	registerHost(t, api, "h1", []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})

	low = waitForPlacement(t, api, low.ID)
	high = waitForPlacement(t, api, high.ID)
	if high.Placement.Epoch >= low.Placement.Epoch {
		t.Fatalf("high-priority job placed at epoch %d, low-priority at %d; want high first", high.Placement.Epoch, low.Placement.Epoch)
	}
	if high.Placement.QueueWaitS != 0 || low.Placement.QueueWaitS <= 0 {
		t.Fatalf("queue waits high %v low %v; want the low one behind the high one", high.Placement.QueueWaitS, low.Placement.QueueWaitS)
	}
}

// beatUntil heartbeats b every 50 ms until the returned stop is called.
func beatUntil(t *testing.T, api *client.Client, b proto.Heartbeat) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			b.Time = time.Now()
			if _, err := api.Heartbeat(ctx, b); err != nil && ctx.Err() == nil {
				t.Errorf("heartbeat %s: %v", b.HostID, err)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

func TestSchedulerSkipsSilentHost(t *testing.T) {
	_, api := newTestServer(t, func(c *Config) { c.HeartbeatGrace = 300 * time.Millisecond })
	putTestModel(t, api, modelA, modelASize)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	registerHost(t, api, "h2", twoSlotGPU, nil)
	// h1 holds the model in VRAM, so it would win every job while alive;
	// it beats once and then falls silent.
	heartbeat(t, api, proto.Heartbeat{HostID: "h1", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: []proto.Digest{testDigest(modelA)}}}})
	stop := beatUntil(t, api, proto.Heartbeat{HostID: "h2"})
	defer stop()

	deadline := time.Now().Add(10 * time.Second)
	for {
		hosts, err := api.Hosts(context.Background())
		if err != nil {
			t.Fatalf("list hosts: %v", err)
		}
		status := map[string]proto.HostStatus{}
		for _, h := range hosts {
			status[h.ID] = h.Status
		}
		if status["h1"] == proto.HostDown && status["h2"] == proto.HostReady {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host status %v after 10 s; want h1 down past its grace and h2 ready", status)
		}
		time.Sleep(20 * time.Millisecond)
	}

	for i := 0; i < 3; i++ {
		j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
		if j.Placement.Host != "h2" {
			t.Fatalf("job %d placed on %s, whose last heartbeat is older than the grace; want h2", i, j.Placement.Host)
		}
	}
}

func TestSchedulerSkipsDrainingHost(t *testing.T) {
	_, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	registerHost(t, api, "h2", twoSlotGPU, nil)
	// h1 holds the model in VRAM but is draining.
	heartbeat(t, api, proto.Heartbeat{HostID: "h1", Draining: true, Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: []proto.Digest{testDigest(modelA)}}}})
	heartbeat(t, api, proto.Heartbeat{HostID: "h2"})

	for i := 0; i < 3; i++ {
		j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
		if j.Placement.Host != "h2" {
			t.Fatalf("job %d placed on draining %s; want h2", i, j.Placement.Host)
		}
	}
	hosts, err := api.Hosts(context.Background())
	if err != nil || len(hosts) != 2 || hosts[0].ID != "h1" || hosts[0].Status != proto.HostDrained {
		t.Fatalf("hosts %+v, %v; want h1 listed as drained (draining, no job left)", hosts, err)
	}
}

func TestSchedulerLeavesOversizedJobQueued(t *testing.T) {
	_, api := newTestServer(t, nil)
	const bigName = "checkpoints/big.safetensors"
	putTestModel(t, api, modelA, modelASize)
	putTestModel(t, api, bigName, 2<<30) // twice the slot
	// Submitted before any host registered, the big job is accepted (the
	// fleet may still be starting); once the only host has 1 GiB slots it
	// can never be placed, and must not hold up the others.
	big := submitWorkflow(t, api, "big.safetensors", 100)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})

	// Every job below is submitted after the big one and placed by a pass
	// that also saw the big one queued (at a higher priority, so first).
	for i := 0; i < 3; i++ {
		j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
		if j.Placement.Host != "h1" {
			t.Fatalf("small job %d placed on %s, want h1", i, j.Placement.Host)
		}
	}
	got, err := api.Job(context.Background(), big.ID)
	if err != nil {
		t.Fatalf("get big job: %v", err)
	}
	if got.State != proto.JobQueued || got.Placement != nil || got.Attempts != 0 {
		t.Fatalf("job needing %d bytes on 1 GiB slots: state %s placement %+v; want it still queued", int64(2<<30), got.State, got.Placement)
	}
	// Now that a host is known, the same job is refused at submit.
	_, err = api.SubmitRaw(context.Background(), []byte(`{"workflow": {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "big.safetensors"}}}}`))
	if !client.IsCode(err, "insufficient_vram") {
		t.Fatalf("second big job: %v, want 422 insufficient_vram", err)
	}
}

func TestSchedulerQueueWaitBehindSameModel(t *testing.T) {
	_, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	registerHost(t, api, "h1", []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})

	first := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	second := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	load := modelASize / DefaultBandwidths[proto.TierOrigin]
	if m := onlyModel(t, first); m.Tier != proto.TierOrigin || first.Placement.QueueWaitS != 0 || !near(first.Placement.EstimateS, load) {
		t.Fatalf("first placement %+v, want origin with no queue wait", first.Placement)
	}
	p := second.Placement
	if p.Host != "h1" || p.Slot != 0 || second.Placement.Epoch <= first.Placement.Epoch {
		t.Fatalf("second placement %+v, want h1 slot 0 after the first", p)
	}
	// The first job will load the model into the slot's worker, so the
	// second finds it in VRAM and waits for the first: its load estimate
	// plus the assumed run time.
	if m := onlyModel(t, second); m.Tier != proto.TierVRAM || m.Seconds != 0 {
		t.Fatalf("second job's model %+v, want tier vram (the queued job loads it)", m)
	}
	wantWait := load + DefaultConfig().DefaultRunS
	if p.QueueWaitS <= 0 || !near(p.QueueWaitS, wantWait) || !near(p.EstimateS, p.QueueWaitS) {
		t.Fatalf("second job queue_wait_s %v estimate_s %v, want both %v", p.QueueWaitS, p.EstimateS, wantWait)
	}
}

// A model only a draining host holds comes from a peer: the host in the
// same rack is estimated at the rack tier's bandwidth and wins over one
// elsewhere, and a host that does not fetch from peers counts the origin
// (the scheduler package's tests check each tier on its own).
func TestSchedulerCountsPeerTiers(t *testing.T) {
	digest := testDigest(modelA)
	_, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	oneSlot := []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}
	for _, h := range []proto.Host{
		{ID: "holder", Labels: map[string]string{"rack": "r1"}, PeerFetch: true},
		{ID: "elsewhere", Labels: map[string]string{"rack": "r2"}, PeerFetch: true},
		{ID: "same-rack", Labels: map[string]string{"rack": "r1"}, PeerFetch: true},
		{ID: "no-peers", Labels: map[string]string{"rack": "r1"}},
	} {
		h.Addr, h.DeviceKind, h.GPUs = "127.0.0.1:7710", "simulated", oneSlot
		if err := api.Register(context.Background(), h); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat(t, api, proto.Heartbeat{HostID: "holder", Draining: true, Cache: []proto.CachedBlob{{Digest: digest, Size: modelASize, Tier: proto.TierDisk}}})
	for _, id := range []string{"elsewhere", "same-rack", "no-peers"} {
		heartbeat(t, api, proto.Heartbeat{HostID: id})
	}
	j := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	if m := onlyModel(t, j); j.Placement.Host != "same-rack" || m.Tier != proto.TierRack || !near(m.Seconds, modelASize/DefaultBandwidths[proto.TierRack]) {
		t.Fatalf("placed on %s with %+v; want same-rack from the rack tier", j.Placement.Host, m)
	}
}
