package coordinator

import (
	"context"
	"errors"
	"time"

	"github.com/hearth-gpu/hearth/coordinator/scheduler"
	"github.com/hearth-gpu/hearth/proto"
)

// schedLoop runs the scheduler package's policy on the leader: it is the
// coordinator's side of scheduler.State (the FSM's queue and the fleet
// index) and scheduler.Planner (placements proposed to Raft, where the FSM
// decides whether each still holds). A scheduler that lost leadership
// mid-pass cannot corrupt anything: its proposals simply fail.
//
// The fleet index follows every node's FSM (registrations, placements,
// reports, through FSM.onChange) and the leader's heartbeats; passes run
// when something that could let a job start changes, and cost nothing when
// nothing did.
type schedLoop struct {
	s      *Server
	fleet  *scheduler.Fleet
	policy *scheduler.Scheduler
	wake   chan struct{}
}

type clockFunc func() time.Time

func (c clockFunc) Now() time.Time { return c() }

func newSchedLoop(s *Server) *schedLoop {
	fleet := scheduler.NewFleet(scheduler.FleetConfig{
		Grace:            s.cfg.HeartbeatGrace,
		DefaultBandwidth: s.cfg.DefaultBandwidth,
		DefaultRunS:      s.cfg.DefaultRunS,
	})
	sc := &schedLoop{
		s:      s,
		fleet:  fleet,
		policy: scheduler.New(scheduler.Config{Clock: clockFunc(s.cfg.Now)}),
		wake:   make(chan struct{}, 1),
	}
	s.fsm.onChange = sc.follow
	s.fsm.onRestore = sc.reload
	s.hosts.follow = sc.followBeat
	return sc
}

// followBeat feeds the fleet a heartbeat: slots and flags, and what its
// inventory change was (the beat itself no longer carries the list). A
// change that could let a queued job start wakes the scheduler.
func (sc *schedLoop) followBeat(b *proto.Heartbeat, change inventoryChange) {
	changed := sc.fleet.Heartbeat(b, sc.s.cfg.Now())
	switch {
	case change.Full:
		changed = sc.fleet.SetCache(b.HostID, change.Blobs) || changed
	case change.Changed:
		changed = sc.fleet.CacheDelta(b.HostID, change.Added, change.Removed) || changed
	}
	if changed {
		sc.poke()
	}
}

// follow feeds the fleet index what an FSM entry stored.
func (sc *schedLoop) follow(jobs []*proto.Job, hosts []*proto.Host) {
	for _, h := range hosts {
		sc.fleet.SetHost(h)
	}
	for _, j := range jobs {
		sc.fleet.SetJob(j)
	}
}

// reload rebuilds the fleet's registrations and placements from a restored
// snapshot.
func (sc *schedLoop) reload() {
	for _, h := range sc.s.fsm.Hosts() {
		sc.fleet.SetHost(h)
	}
	sc.fleet.ResetJobs(sc.s.fsm.ActiveJobs())
	sc.poke()
}

// poke asks for a scheduling pass soon without blocking.
func (sc *schedLoop) poke() {
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// observe is the FSM's after-apply hook, called on every node.
func (sc *schedLoop) observe(cmd proto.Command, res any) {
	j, _ := res.(*proto.Job)
	switch c := cmd.(type) {
	case *proto.SubmitJob, *proto.RegisterHost:
		sc.poke()
	case *proto.PlaceJob:
		if j != nil && j.Placement != nil {
			sc.s.metrics.observePlacement(j.Placement)
		}
	case *proto.PlaceJobs:
		rs, _ := res.([]PlaceResult)
		for _, r := range rs {
			if r.Job != nil && r.Job.Placement != nil {
				sc.s.metrics.observePlacement(r.Job.Placement)
			}
		}
	case *proto.SubmitJobs, *proto.RetryJob, *proto.MarkHostDown, *proto.DrainHost, *proto.CancelJob, *proto.TimeoutJobs:
		sc.poke()
	case *proto.ReportJob:
		if c.Report.State.Terminal() || c.Report.Retryable {
			sc.poke()
		}
	}
}

// minPassGap spaces passes out under a flood of wake-ups (every accepted
// batch pokes), so the leader's CPU goes to accepting jobs rather than to
// passes that each place a handful.
const minPassGap = 10 * time.Millisecond

func (sc *schedLoop) run(ctx context.Context) {
	t := time.NewTicker(sc.s.cfg.SchedulerInterval)
	defer t.Stop()
	for {
		start := time.Now()
		sc.pass()
		select {
		case <-ctx.Done():
			return
		case <-sc.wake:
		case <-t.C:
		}
		if gap := minPassGap - time.Since(start); gap > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
	}
}

func (sc *schedLoop) pass() {
	s := sc.s
	queued, depth := s.fsm.Queued(s.cfg.Now())
	s.metrics.setQueueDepth(depth)
	if len(queued) == 0 {
		return
	}
	start := time.Now()
	st, err := sc.policy.Pass(passState{queued: queued, fleet: sc.fleet}, sc)
	if !st.Idle {
		s.metrics.passSecs.Observe(time.Since(start).Seconds())
	}
	if err != nil && !errors.Is(err, ErrNotLeader) {
		s.log.Warn("placements not recorded", "err", err)
	}
}

// passState is one pass's scheduler.State: the queue as the FSM had it
// when the pass began, and the fleet.
type passState struct {
	queued []*proto.Job
	fleet  *scheduler.Fleet
}

func (p passState) Queued() []*proto.Job    { return p.queued }
func (p passState) Fleet() *scheduler.Fleet { return p.fleet }

// modelRefs resolves digests in the catalog, without chunk digests (an
// agent warming a model fetches it whole, if it must fetch it at all).
func (sc *schedLoop) modelRefs(ds []proto.Digest) []proto.ModelRef {
	var out []proto.ModelRef
	for _, d := range ds {
		if m, ok := sc.s.fsm.ModelByDigest(d); ok {
			out = append(out, proto.ModelRef{Name: m.Name, Digest: m.Digest, Size: m.Size, Origin: m.Origin})
		}
	}
	return out
}

// SubmitPlan implements scheduler.Planner: the pass's placements go to
// Raft as one entry, and the FSM checks each on its own.
func (sc *schedLoop) SubmitPlan(plan []scheduler.Placement) ([]error, error) {
	items := make([]proto.PlaceJob, len(plan))
	for i, p := range plan {
		items[i] = proto.PlaceJob{JobID: p.Job.ID, Placement: p.Placement}
		items[i].Placement.Warm = sc.modelRefs(p.Warm)
	}
	res, err := sc.s.propose(&proto.PlaceJobs{Items: items})
	if err != nil {
		return nil, err
	}
	rs := res.([]PlaceResult)
	errs := make([]error, len(plan))
	for i := range plan {
		if i >= len(rs) {
			errs[i] = errors.New("coordinator: no result for this placement")
			continue
		}
		if errs[i] = rs[i].Err; errs[i] != nil {
			sc.s.log.Warn("placement refused", "job", items[i].JobID, "err", errs[i])
			continue
		}
		p := rs[i].Job.Placement
		sc.s.log.Debug("placed", "job", rs[i].Job.ID, "host", p.Host, "gpu", p.GPU, "slot", p.Slot, "estimate_s", p.EstimateS)
	}
	return errs, nil
}
