package scheduler

import (
	"cmp"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// State is what a pass reads: the queue and the fleet. The coordinator
// implements it over its FSM, the simulator over its simulated cluster.
type State interface {
	// Queued returns the jobs waiting for a placement that may be placed
	// now (a requeued job's backoff has passed), in any order: the pass
	// sorts them, and may reorder the slice it is given.
	Queued() []*proto.Job
	// Fleet returns the hosts, their slots and the placed jobs.
	Fleet() *Fleet
}

// Placement is one decision of a pass.
type Placement struct {
	Job       *proto.Job
	Placement proto.Placement
	// Warm are models the slot should load once the job is done, if
	// nothing else waits for it: what jobs like this one often ask for
	// besides (see Scheduler).
	Warm []proto.Digest
}

// Planner records a pass's decisions: the coordinator proposes them to
// Raft, where the FSM decides whether each still holds; the simulator
// starts them.
type Planner interface {
	// SubmitPlan returns, for each placement in order, nil or why it was
	// refused. An error refuses them all.
	SubmitPlan(plan []Placement) ([]error, error)
}

// Clock tells a pass the time: the wall clock in the coordinator, the
// simulated one in the simulator.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// Policy decides placements, one pass at a time. Scheduler is hearth's;
// the others in this package are the policies a user could pick instead,
// which the simulator runs beside it.
type Policy interface {
	Name() string
	Pass(st State, p Planner) (PassStats, error)
}

// PassStats says what a pass did.
type PassStats struct {
	Queued int // jobs in the queue
	Placed int
	Scored int  // candidate slots scored
	Idle   bool // nothing changed since the last pass, so it did nothing
}

// SortQueue orders jobs as every policy takes them: higher priority first,
// then first submitted, then by id.
func SortQueue(jobs []*proto.Job) {
	slices.SortFunc(jobs, func(a, b *proto.Job) int {
		return cmp.Or(cmp.Compare(b.Spec.Priority, a.Spec.Priority), a.SubmittedAt.Compare(b.SubmittedAt), cmp.Compare(a.ID, b.ID))
	})
}

// VRAMNeed is the slot size a job needs: its declared VRAM, and at least
// room for its models.
func VRAMNeed(j *proto.Job) int64 {
	var need int64
	for _, m := range j.Models {
		need += m.Size
	}
	return max(need, j.Spec.VRAMBytes)
}

// submit hands plan to p and takes back from f the placements p refused,
// or all of them when it fails.
func submit(f *Fleet, p Planner, plan []Placement) (int, error) {
	if len(plan) == 0 {
		return 0, nil
	}
	errs, err := p.SubmitPlan(plan)
	f.mu.Lock()
	defer f.mu.Unlock()
	placed := 0
	for i, pl := range plan {
		if err != nil || i < len(errs) && errs[i] != nil {
			f.unplace(pl.Job.ID)
			continue
		}
		placed++
	}
	if placed < len(plan) {
		f.gen++ // what was taken back is open again
	}
	return placed, err
}

// setWarm records what a placed job's slot is to warm after it, and
// predicts the slot's residency with it.
func (f *Fleet) setWarm(id string, warm []uint32) {
	if e := f.jobs[id]; e != nil && len(warm) > 0 {
		e.warm = warm
		f.repredict(e.slot)
	}
}

// place records a pass's decision in f at once, so the rest of the pass
// (and the next, before the planner's answer has come back through
// SetJob) sees the slot taken and what it will hold.
func (f *Fleet) place(j *proto.Job, s *slot, p *proto.Placement) {
	now := p.PlacedAt
	e := f.newJobEntry(j, s, p)
	f.attach(e)
	for _, d := range e.models {
		f.blobs[d].addDemand(now)
	}
}
