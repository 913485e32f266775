package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// The sweeper is the leader's clock-driven loop: it marks hosts down when
// their heartbeats stop (which requeues their jobs) and times out jobs
// that outlived their queue TTL or run timeout. It only proposes; the FSM
// re-checks each decision against the state at apply time, so a sweep
// that raced with a heartbeat or a report cannot undo it.

// sweepEvery is how often the sweeper looks, given the heartbeat grace.
func sweepEvery(grace time.Duration) time.Duration {
	return min(max(grace/4, 50*time.Millisecond), time.Second)
}

// runSweeper runs until ctx ends. since is when this node became leader:
// it has heard no heartbeats before then, so every host gets a full grace
// from that moment instead of being marked down on the first sweep.
func (s *Server) runSweeper(ctx context.Context, since time.Time) {
	t := time.NewTicker(sweepEvery(s.cfg.HeartbeatGrace))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		if err := errors.Join(s.sweepHosts(now, since), s.sweepTimeouts(now)); err != nil {
			if errors.Is(err, ErrNotLeader) {
				return
			}
			s.log.Warn("sweep failed", "err", err)
		}
	}
}

func (s *Server) sweepHosts(now, since time.Time) error {
	var errs []error
	for _, h := range s.fsm.Hosts() {
		if h.DownAt != nil {
			continue
		}
		_, last, _ := s.hosts.get(h.ID, s.cfg.HeartbeatGrace)
		for _, t := range []time.Time{since, h.RegisteredAt} {
			if t.After(last) {
				last = t
			}
		}
		silent := now.Sub(last)
		if silent <= s.cfg.HeartbeatGrace {
			continue
		}
		reason := fmt.Sprintf("no heartbeat for %s (grace %s)", silent.Round(time.Millisecond), s.cfg.HeartbeatGrace)
		if err := s.markHostDown(h.ID, reason); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// markHostDown commits that a host is down, which requeues its jobs.
func (s *Server) markHostDown(id, reason string) error {
	res, err := s.propose(&proto.MarkHostDown{
		HostID: id, Time: s.cfg.Now().UTC(), Reason: reason,
		Backoff: s.cfg.RequeueBackoff, BackoffMax: s.cfg.RequeueBackoffMax,
	})
	if err != nil {
		return err
	}
	r := res.(*HostDownResult)
	s.metrics.hostsDown.Inc()
	s.metrics.requeued.Add(float64(len(r.Requeued)))
	s.log.Warn("host down", "host", id, "reason", reason, "requeued", len(r.Requeued), "failed", len(r.Failed))
	return nil
}

// queuedSince is when j last entered the queue (submission, a requeue or
// a retry): its queue TTL counts from there.
func queuedSince(j *proto.Job) time.Time {
	for i := len(j.History) - 1; i >= 0; i-- {
		if ev := j.History[i]; ev.Type == proto.EventState && ev.State == proto.JobQueued {
			return ev.Time
		}
	}
	return j.SubmittedAt
}

func (s *Server) sweepTimeouts(now time.Time) error {
	var items []proto.TimeoutItem
	for _, j := range s.fsm.ActiveJobs() {
		switch {
		case j.State == proto.JobQueued && j.Spec.QueueTTLS > 0:
			ttl := time.Duration(j.Spec.QueueTTLS * float64(time.Second))
			if now.Sub(queuedSince(j)) > ttl {
				items = append(items, proto.TimeoutItem{JobID: j.ID,
					Reason: fmt.Sprintf("waited in the queue longer than queue_ttl_s=%g", j.Spec.QueueTTLS)})
			}
		case j.StartedAt != nil && j.Placement != nil:
			// The agent stops a run at its timeout and reports timed_out;
			// this catches an agent that never did.
			limit := time.Duration(j.Spec.TimeoutS*float64(time.Second)) + s.cfg.TimeoutSlack
			if j.Spec.TimeoutS > 0 && now.Sub(*j.StartedAt) > limit {
				items = append(items, proto.TimeoutItem{JobID: j.ID, Epoch: j.Placement.Epoch,
					Reason: fmt.Sprintf("ran longer than timeout_s=%g and host %s did not report the end", j.Spec.TimeoutS, j.Placement.Host)})
			}
		}
	}
	if len(items) == 0 {
		return nil
	}
	slices.SortFunc(items, func(a, b proto.TimeoutItem) int { return strings.Compare(a.JobID, b.JobID) })
	_, err := s.propose(&proto.TimeoutJobs{Items: items, Time: now.UTC()})
	return err
}
