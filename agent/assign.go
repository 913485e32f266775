package agent

import (
	"context"
	"strconv"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// jobRun is one assignment this agent holds.
type jobRun struct {
	assignment proto.Assignment
	ctx        context.Context
	cancel     context.CancelFunc
	slot       *slot
}

// pollLoop long-polls the coordinator and reconciles against each answer.
func (a *Agent) pollLoop() {
	var index uint64
	backoff := 100 * time.Millisecond
	for a.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.PollWait+10*time.Second)
		as, err := a.api.Assignments(ctx, a.cfg.HostID, index, a.cfg.PollWait)
		cancel()
		if err != nil {
			if a.ctx.Err() != nil {
				return
			}
			if client.IsCode(err, "host_not_registered") {
				_ = a.register(a.ctx)
			}
			a.log.Warn("assignment poll failed", "err", err, "retry_in", backoff)
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			index = 0
			continue
		}
		a.life.markContact()
		backoff = 100 * time.Millisecond
		index = as.Index
		a.reconcile(as.Assignments)
	}
}

// reconcile makes the agent's live jobs match the coordinator's list: new
// assignments are queued on their slot; jobs that left the list (cancelled,
// or placed elsewhere after this host was presumed down) are stopped.
func (a *Agent) reconcile(list []proto.Assignment) {
	want := make(map[string]proto.Assignment, len(list))
	for _, as := range list {
		want[as.JobID] = as
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, j := range a.jobs {
		if as, ok := want[id]; !ok || as.Epoch != j.assignment.Epoch || as.Cancel {
			a.log.Info("assignment withdrawn; stopping job", "job", id, "epoch", j.assignment.Epoch)
			j.cancel()
			j.slot.remove(j)
			delete(a.jobs, id)
		}
	}
	for _, as := range list {
		if _, ok := a.jobs[as.JobID]; ok || as.Cancel {
			continue
		}
		if a.life.leaving.Load() {
			// Placed before the coordinator heard this host is leaving.
			a.handBackLocked(as)
			continue
		}
		sl := a.slotAt(as.GPU, as.Slot)
		if sl == nil {
			a.log.Error("assignment names a slot this host does not have", "job", as.JobID, "gpu", as.GPU, "slot", as.Slot)
			go a.report(as, proto.JobReport{State: proto.JobFailed, Error: "agent " + a.cfg.HostID + " has no GPU " + strconv.Itoa(as.GPU) + " slot " + strconv.Itoa(as.Slot)})
			continue
		}
		ctx, cancel := context.WithCancel(a.ctx)
		j := &jobRun{assignment: as, ctx: ctx, cancel: cancel, slot: sl}
		a.jobs[as.JobID] = j
		sl.enqueue(j)
	}
}

// forget drops a finished job, unless a newer assignment replaced it.
func (a *Agent) forget(j *jobRun) {
	a.mu.Lock()
	if cur, ok := a.jobs[j.assignment.JobID]; ok && cur == j {
		delete(a.jobs, j.assignment.JobID)
	}
	a.mu.Unlock()
	j.cancel()
}

func (a *Agent) slotAt(gpu, index int) *slot {
	for _, s := range a.slots {
		if s.gpu == gpu && s.index == index {
			return s
		}
	}
	return nil
}

// report sends one transition, retrying transient failures. It returns
// false if the coordinator says the assignment is no longer ours (stale
// epoch or job gone), so the caller stops working on it.
func (a *Agent) report(as proto.Assignment, r proto.JobReport) bool {
	r.JobID, r.HostID, r.Epoch = as.JobID, a.cfg.HostID, as.Epoch
	backoff := 100 * time.Millisecond
	for attempt := 0; attempt < 8; attempt++ {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		err := a.api.Report(ctx, r)
		cancel()
		if err == nil {
			return true
		}
		if client.IsCode(err, "stale_epoch") || client.IsCode(err, "job_not_found") || client.IsCode(err, "bad_transition") {
			a.log.Info("report refused; dropping job", "job", as.JobID, "state", r.State, "err", err)
			return false
		}
		if a.ctx.Err() != nil {
			return false
		}
		a.log.Warn("report failed; retrying", "job", as.JobID, "state", r.State, "err", err)
		select {
		case <-a.ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return false
}

func itoa(i int) string { return strconv.Itoa(i) }
