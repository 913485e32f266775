package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// lifecycle is what the agent knows about its own state beyond its jobs:
// whether it has registered, whether it is leaving, when its heartbeat
// loop last went round and when a coordinator last answered. /readyz, the
// systemd watchdog and a graceful shutdown read it.
type lifecycle struct {
	registered atomic.Bool
	leaving    atomic.Bool
	// deregister is set by Shutdown so that close tells the coordinator
	// the host left.
	deregister atomic.Bool
	started    atomic.Int64 // unix ns: registration, the heartbeat loop's start
	tick       atomic.Int64 // unix ns: the heartbeat loop's last round
	contact    atomic.Int64 // unix ns: a coordinator's last answer

	mu sync.Mutex
	// handedBack holds the assignments (job id → epoch) given back while
	// leaving, so a long-poll answer that still lists one does not hand it
	// back twice.
	handedBack map[string]uint64
}

func (l *lifecycle) markRegistered() {
	now := time.Now().UnixNano()
	l.started.Store(now)
	l.contact.Store(now)
	l.registered.Store(true)
}

func (l *lifecycle) markTick()    { l.tick.Store(time.Now().UnixNano()) }
func (l *lifecycle) markContact() { l.contact.Store(time.Now().UnixNano()) }

func since(ns int64) time.Duration { return time.Since(time.Unix(0, ns)) }

// heartbeatTimeout bounds one heartbeat (and the registration it may
// repeat), so one round of the heartbeat loop ends within it plus a GPU
// reading.
const heartbeatTimeout = 5 * time.Second

// Healthy reports whether the agent process itself works, for the systemd
// watchdog: nil while its heartbeat loop has gone round within three
// intervals plus one heartbeat's timeout. A loop that stopped going round
// is wedged (an NVML call that never returns, a deadlock), and a restart
// is the fix. A coordinator that does not answer is not the agent's fault:
// restarting would only kill the jobs it runs, so that makes the agent
// not ready (/readyz) but not unhealthy.
func (a *Agent) Healthy() error {
	last := max(a.life.tick.Load(), a.life.started.Load())
	if last == 0 {
		return errors.New("agent: not started")
	}
	limit := 3*a.cfg.HeartbeatInterval + heartbeatTimeout
	if d := since(last); d > limit {
		return fmt.Errorf("agent: the heartbeat loop has not gone round for %s (limit %s): wedged reading the GPUs or sending", d.Round(time.Millisecond), limit)
	}
	return nil
}

// readiness reports whether the agent takes work: nil once it is
// registered, while it is not shutting down and a coordinator answered
// within three heartbeat intervals. The code and the error's sentence are
// /readyz's answer otherwise.
func (a *Agent) readiness() (code string, err error) {
	switch {
	case !a.life.registered.Load():
		return "starting", errors.New("not registered with a coordinator yet")
	case a.life.leaving.Load():
		return "shutting_down", errors.New("shutting down: taking no new jobs while the running ones finish")
	}
	limit := 3 * a.cfg.HeartbeatInterval
	if d := since(a.life.contact.Load()); d > limit {
		return "coordinator_unreachable", fmt.Errorf("no coordinator answered for %s (%s tried last); jobs already here go on", d.Round(time.Millisecond), a.api.Base())
	}
	return "", nil
}

// Shutdown stops the agent gracefully. It takes no new assignment from
// then on and says so in its heartbeats (Heartbeat.Draining), so the
// scheduler places nothing more here; assignments not yet started are
// handed back at once. It waits for the running jobs to finish, at most
// ShutdownTimeout or until ctx ends (a second signal), then cancels what
// is left, tells the coordinator the host left, so that those jobs are
// requeued now rather than after the heartbeat grace, and closes.
//
// It keeps long-polling meanwhile: that is how a cancel reaches a job that
// is still running.
func (a *Agent) Shutdown(ctx context.Context) error {
	if !a.life.leaving.Swap(true) {
		a.log.Info("shutting down: taking no new jobs", "running", a.activeJobs(), "timeout", a.cfg.ShutdownTimeout)
	}
	a.life.deregister.Store(true)
	// The coordinator hears that nothing new should come before the queued
	// jobs are handed back, so it does not place them here again.
	a.sendHeartbeat()
	a.handBackQueued()
	if a.cfg.ShutdownTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.cfg.ShutdownTimeout)
		defer cancel()
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for n := a.activeJobs(); n > 0; n = a.activeJobs() {
		select {
		case <-ctx.Done():
			a.log.Warn("shutdown: cancelling the jobs still running; the coordinator requeues them", "jobs", n, "why", context.Cause(ctx))
			return a.Close()
		case <-t.C:
		}
	}
	a.log.Info("shutdown: no job left")
	return a.Close()
}

func (a *Agent) activeJobs() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.jobs)
}

// handBackQueued gives back every assignment that waits in a slot's queue:
// it will not start here, and the coordinator can place it elsewhere now.
func (a *Agent) handBackQueued() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, j := range a.jobs {
		if j.slot.remove(j) {
			j.cancel()
			delete(a.jobs, id)
			a.handBackLocked(j.assignment)
		}
	}
}

// handBackLocked reports as with a retryable failure an assignment this
// agent will not run because it is leaving. Callers hold a.mu.
func (a *Agent) handBackLocked(as proto.Assignment) {
	a.life.mu.Lock()
	defer a.life.mu.Unlock()
	if a.life.handedBack == nil {
		a.life.handedBack = make(map[string]uint64)
	}
	if e, ok := a.life.handedBack[as.JobID]; ok && e == as.Epoch {
		return
	}
	a.life.handedBack[as.JobID] = as.Epoch
	a.log.Info("shutting down: handing back a job that has not started", "job", as.JobID, "epoch", as.Epoch)
	r := proto.JobReport{State: proto.JobFailed, Retryable: true, Error: "host " + a.cfg.HostID + " is shutting down; the job had not started"}
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.report(as, r) }()
}

// deregisterIfLeaving tells the coordinator the host left, when Shutdown
// asked for it. It runs once the loops have stopped, so no heartbeat can
// follow and bring the host back up.
func (a *Agent) deregisterIfLeaving() {
	if !a.life.deregister.Load() || !a.life.registered.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.api.Deregister(ctx, a.cfg.HostID, "the agent shut down"); err != nil {
		a.log.Warn("could not deregister; the coordinator marks the host down after its heartbeat grace", "err", err)
		return
	}
	a.log.Info("deregistered: the coordinator marked this host down")
}
