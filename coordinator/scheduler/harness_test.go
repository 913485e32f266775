package scheduler

import (
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// harness drives a policy without a coordinator, as Nomad's scheduler
// tests do: a fleet fed directly, a queue, a clock the test moves, and a
// planner that records each plan and accepts it (or refuses what the test
// says).
type harness struct {
	t      *testing.T
	fleet  *Fleet
	clock  *fakeClock
	queue  []*proto.Job
	plans  [][]Placement
	refuse map[string]error
	seq    int
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

var testBandwidth = map[proto.Tier]float64{
	proto.TierRAM: 4.9e9, proto.TierDisk: 1.5e9, proto.TierRack: 2.4e9, proto.TierPeer: 1.1e9, proto.TierOrigin: 0.25e9,
}

func newHarness(t *testing.T) *harness {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return &harness{
		t:     t,
		fleet: NewFleet(FleetConfig{Grace: 10 * time.Second, DefaultBandwidth: testBandwidth, DefaultRunS: 5}),
		clock: clock,
	}
}

func (h *harness) Queued() []*proto.Job {
	var out []*proto.Job
	for _, j := range h.queue {
		if j.State == proto.JobQueued {
			out = append(out, j)
		}
	}
	return out
}

func (h *harness) Fleet() *Fleet { return h.fleet }

// SubmitPlan accepts the plan, as the FSM would, and feeds the placed jobs
// back to the fleet.
func (h *harness) SubmitPlan(plan []Placement) ([]error, error) {
	h.plans = append(h.plans, plan)
	errs := make([]error, len(plan))
	for i, p := range plan {
		if err := h.refuse[p.Job.ID]; err != nil {
			errs[i] = err
			continue
		}
		pl := p.Placement
		pl.Epoch = uint64(len(h.plans))<<16 | uint64(i)
		p.Job.State, p.Job.Placement = proto.JobPlaced, &pl
		h.fleet.SetJob(p.Job)
	}
	return errs, nil
}

func digestOf(name string) proto.Digest {
	sum := sha256.Sum256([]byte(name))
	return proto.DigestFromSum(sum[:])
}

// host registers a host with gpus GPUs of slots slots of slotGB each and
// beats once for it. A host given labels (its rack) fetches from and
// serves peers.
func (h *harness) host(id string, gpus, slots int, slotGB float64, labels map[string]string) {
	reg := &proto.Host{ID: id, Labels: labels, PeerFetch: labels != nil}
	for g := 0; g < gpus; g++ {
		reg.GPUs = append(reg.GPUs, proto.GPU{Index: g, Slots: slots, SlotBytes: uint64(slotGB * 1e9)})
	}
	h.fleet.SetHost(reg)
	h.beat(proto.Heartbeat{HostID: id})
}

func (h *harness) beat(b proto.Heartbeat) {
	if b.Cache == nil {
		b.Cache = []proto.CachedBlob{}
	}
	h.fleet.Heartbeat(&b, h.clock.now)
}

// submit queues a job needing the named models of the given sizes (GB).
func (h *harness) submit(models ...any) *proto.Job {
	h.seq++
	j := &proto.Job{ID: fmt.Sprintf("job-%03d", h.seq), State: proto.JobQueued, SubmittedAt: h.clock.now,
		Spec: proto.JobSpec{Workflow: []byte(`{}`)}}
	for i := 0; i+1 < len(models); i += 2 {
		name := models[i].(string)
		j.Models = append(j.Models, proto.ModelRef{Name: name, Digest: digestOf(name), Size: int64(models[i+1].(float64) * 1e9)})
	}
	h.queue = append(h.queue, j)
	return j
}

// pass runs one pass of p and returns its stats.
func (h *harness) pass(p Policy) PassStats {
	h.t.Helper()
	st, err := p.Pass(h, h)
	if err != nil {
		h.t.Fatalf("pass: %v", err)
	}
	return st
}

// run moves a placed job to running, as the agent's report would.
func (h *harness) run(j *proto.Job) {
	j.State = proto.JobRunning
	j.History = append(j.History, proto.JobEvent{Type: proto.EventState, State: proto.JobRunning, Time: h.clock.now})
	h.fleet.SetJob(j)
}

// finish ends a job successfully after runS seconds.
func (h *harness) finish(j *proto.Job, runS float64) {
	j.State, j.RunS = proto.JobSucceeded, runS
	h.fleet.SetJob(j)
}

func (h *harness) advance(d time.Duration) { h.clock.now = h.clock.now.Add(d) }

func where(j *proto.Job) string {
	if j.Placement == nil {
		return "queued"
	}
	return fmt.Sprintf("%s/%d/%d", j.Placement.Host, j.Placement.GPU, j.Placement.Slot)
}

func residentOf(names ...string) []proto.Digest {
	var out []proto.Digest
	for _, n := range names {
		out = append(out, digestOf(n))
	}
	return out
}

func cached(tier proto.Tier, name string, gb float64) proto.CachedBlob {
	return proto.CachedBlob{Digest: digestOf(name), Size: int64(gb * 1e9), Tier: tier}
}
