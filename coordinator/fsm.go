package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/proto"
)

// The FSM is the coordinator's replicated state: jobs, the model catalog,
// host registrations, coordinator addresses and idempotency keys
// (assignments are a job's live placement and webhook deliveries live on
// their job, so neither is stored twice).
//
// Concurrency contract. hashicorp/raft calls Apply, Snapshot and Restore from
// one goroutine, never concurrently with each other. HTTP handlers, the
// scheduler and long-polling agents read concurrently with Apply through the
// methods below, which take mu for reading. Stored values are copy-on-write:
// Apply never mutates a *proto.Job, *proto.Model or *proto.Host that a map
// already holds; it stores a modified clone. A reader may therefore keep a
// pointer after releasing mu, and Snapshot only copies the maps, not the
// values, before it releases the lock and serialises at leisure.
//
// Determinism. Apply uses only what the entry carries: the leader stamps ids
// and times into a command before proposing it, and epochs and event ids
// come from the log index. Every replica thus reaches the same state, and
// emits the same events, from the same log.
//
// Watching. Every Apply closes the current `changed` channel and makes a new
// one, so a long-poll can wait for "anything after index N" without polling.
// The events an entry caused go to onEvents after mu is released, and the
// jobs and hosts it stored to onChange, so the scheduler's fleet index
// follows the log without reading the whole state; after a Restore,
// onRestore is called instead.
type FSM struct {
	mu     sync.RWMutex
	jobs   map[string]*proto.Job
	live   map[string]*proto.Job // jobs not yet terminal
	queued map[string]*proto.Job // of those, the ones waiting for a placement
	// byHost files the live placed jobs by host: a host's assignments.
	// hostIndex is the log index at which a host's assignments last
	// changed, and hostWake is closed then, so an agent's long-poll wakes
	// for its own assignments, not for every entry of the fleet.
	byHost    map[string]map[string]*proto.Job
	hostIndex map[string]uint64
	hostWake  map[string]chan struct{}
	hooks     map[string]struct{} // ids of jobs with a pending webhook delivery
	idem      map[string]idemEntry
	// idemAdds counts keys added, to sweep expired ones now and then.
	idemAdds int
	models   map[string]*proto.Model
	hosts    map[string]*proto.Host
	coords   map[string]*proto.Coordinator

	index   uint64 // last applied log index
	changed chan struct{}
	events  []proto.JobEvent // emitted by the entry being applied

	// onApply, if set, is called after each applied command outside mu,
	// with how long decoding and applying it took; the server uses it to
	// wake the leader's loops and count metrics.
	onApply func(cmd proto.Command, res any, took time.Duration)
	// onEvents, if set, receives each entry's events outside mu, in order.
	onEvents func([]proto.JobEvent)
	// onChange, if set, receives the jobs and hosts each entry stored,
	// outside mu, in log order; onRestore is called after a Restore.
	onChange     func(jobs []*proto.Job, hosts []*proto.Host)
	onRestore    func()
	changedJobs  []*proto.Job
	changedHosts []*proto.Host

	// hostsGen counts changes to the host registrations; sortedHosts and
	// largest are derived from them and rebuilt when it moves.
	hostsGen    uint64
	sortedHosts []*proto.Host
	sortedAt    uint64
	largest     map[string]slotReach
	largestAt   uint64
	// byDigest indexes the catalog by digest; nil when it must be rebuilt.
	byDigest map[proto.Digest]*proto.Model
}

// slotReach is what the hosts that run one job kind offer: the largest
// slot among them and how many there are.
type slotReach struct {
	largest uint64
	takers  int
}

// idemEntry remembers which job an Idempotency-Key created, and from which
// request body.
type idemEntry struct {
	Key   string    `json:"key"`
	JobID string    `json:"job_id"`
	Hash  string    `json:"hash"`
	At    time.Time `json:"at"`
}

// IdempotencyWindow is how long an Idempotency-Key is remembered. The check
// compares the key's age with the time in the entry being applied, so every
// replica agrees on it whatever its own clock says.
const IdempotencyWindow = 24 * time.Hour

// NewFSM returns an empty state machine.
func NewFSM() *FSM {
	return &FSM{
		jobs:      make(map[string]*proto.Job),
		live:      make(map[string]*proto.Job),
		queued:    make(map[string]*proto.Job),
		byHost:    make(map[string]map[string]*proto.Job),
		hostIndex: make(map[string]uint64),
		hostWake:  make(map[string]chan struct{}),
		hooks:     make(map[string]struct{}),
		idem:      make(map[string]idemEntry),
		models:    make(map[string]*proto.Model),
		hosts:     make(map[string]*proto.Host),
		coords:    make(map[string]*proto.Coordinator),
		changed:   make(chan struct{}),
	}
}

// Errors an Apply can return to the proposer. They are results, not
// failures of the log: the entry is committed and every replica refuses it
// the same way.
var (
	ErrJobExists           = errors.New("coordinator: job already exists")
	ErrJobNotFound         = errors.New("coordinator: job not found")
	ErrStaleEpoch          = errors.New("coordinator: report from a stale placement")
	ErrBadTransition       = errors.New("coordinator: job state transition not allowed")
	ErrHostNotFound        = errors.New("coordinator: host not registered")
	ErrHostDown            = errors.New("coordinator: host is down")
	ErrIdempotencyConflict = errors.New("coordinator: Idempotency-Key was used with a different request")
)

// SubmitResult is the FSM's answer for one job of a SubmitJobs batch.
type SubmitResult struct {
	Job *proto.Job
	// Existing is set when an Idempotency-Key matched an earlier job.
	Existing bool
	Err      error
}

// PlaceResult is the FSM's answer for one placement of a PlaceJobs batch.
type PlaceResult struct {
	Job *proto.Job
	Err error
}

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	start := time.Now()
	cmd, err := proto.DecodeCommand(l.Data)
	if err != nil {
		// Refusing an entry we cannot read keeps this replica from silently
		// diverging; the error reaches the proposer and the logs.
		f.mu.Lock()
		f.advance(l.Index)
		f.mu.Unlock()
		return fmt.Errorf("coordinator: apply index %d: %w", l.Index, err)
	}
	f.mu.Lock()
	f.events = nil
	res := f.apply(l.Index, cmd)
	f.advance(l.Index)
	cb, ecb, evs := f.onApply, f.onEvents, f.events
	chg, jobs, hosts := f.onChange, f.changedJobs, f.changedHosts
	f.events, f.changedJobs, f.changedHosts = nil, nil, nil
	f.mu.Unlock()
	if chg != nil && len(jobs)+len(hosts) > 0 {
		chg(jobs, hosts)
	}
	if ecb != nil && len(evs) > 0 {
		ecb(evs)
	}
	if cb != nil {
		cb(cmd, res, time.Since(start))
	}
	return res
}

func (f *FSM) advance(index uint64) {
	f.index = index
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *FSM) apply(index uint64, cmd proto.Command) any {
	switch c := cmd.(type) {
	case *proto.PutModel:
		m := c.Model
		if old, ok := f.models[m.Name]; ok {
			m.CreatedAt = old.CreatedAt
		}
		m.Index = index
		f.models[m.Name] = &m
		f.byDigest = nil
		return &m
	case *proto.SubmitJob:
		r := f.applySubmit(index, &proto.SubmitItem{Job: c.Job})
		if r.Err != nil {
			return r.Err
		}
		return r.Job
	case *proto.SubmitJobs:
		out := make([]SubmitResult, len(c.Items))
		for i := range c.Items {
			out[i] = f.applySubmit(index, &c.Items[i])
		}
		return out
	case *proto.RegisterHost:
		h := c.Host
		h.Index = index
		h.DownAt, h.DownReason = nil, ""
		h.Drain, h.DrainSince = false, nil
		if old, ok := f.hosts[h.ID]; ok {
			// An operator's drain outlasts the agent's restarts.
			h.Drain, h.DrainSince = old.Drain, old.DrainSince
		}
		f.storeHost(&h)
		return &h
	case *proto.PlaceJob:
		r := f.applyPlace(index, 0, c)
		if r.Err != nil {
			return r.Err
		}
		return r.Job
	case *proto.PlaceJobs:
		out := make([]PlaceResult, len(c.Items))
		for i := range c.Items {
			out[i] = f.applyPlace(index, i, &c.Items[i])
		}
		return out
	case *proto.ReportJob:
		return f.applyReport(index, c)
	case *proto.CancelJob:
		return f.applyCancel(index, c)
	case *proto.RetryJob:
		return f.applyRetry(index, c)
	case *proto.MarkHostDown:
		return f.applyHostDown(index, c)
	case *proto.TimeoutJobs:
		return f.applyTimeouts(index, c)
	case *proto.WebhookResults:
		return f.applyWebhookResults(index, c)
	case *proto.DrainHost:
		return f.applyDrain(index, c)
	case *proto.SetCoordinator:
		co := c.Coordinator
		f.coords[co.ID] = &co
		return &co
	}
	return fmt.Errorf("coordinator: apply index %d: no handler for %v", index, cmd.CommandType())
}

// emit records an event of j and appends it to j's history (progress is
// streamed but not kept). j must be the FSM's fresh clone.
func (f *FSM) emit(index uint64, j *proto.Job, ev proto.JobEvent) {
	ev.ID = proto.EventID(index, len(f.events))
	ev.JobID = j.ID
	if ev.Type != proto.EventProgress {
		j.History = append(j.History, ev)
	}
	f.events = append(f.events, ev)
}

// store saves j and keeps the live and queued indexes in step with its
// state.
func (f *FSM) store(index uint64, j *proto.Job) {
	j.Index = index
	f.jobs[j.ID] = j
	f.fileJob(index, j)
	if f.onChange != nil {
		f.changedJobs = append(f.changedJobs, j)
	}
}

// fileJob files j in the live, queued and per-host indexes by its state,
// as of the entry at index.
func (f *FSM) fileJob(index uint64, j *proto.Job) {
	prev := f.live[j.ID]
	if j.State.Terminal() {
		delete(f.live, j.ID)
	} else {
		f.live[j.ID] = j
	}
	if j.State == proto.JobQueued {
		f.queued[j.ID] = j
	} else {
		delete(f.queued, j.ID)
	}
	var was, now *proto.Placement
	if prev != nil {
		was = prev.Placement
	}
	if !j.State.Terminal() {
		now = j.Placement
	}
	if was != nil && (now == nil || now.Host != was.Host) {
		delete(f.byHost[was.Host], j.ID)
		f.touchHost(index, was.Host)
	}
	if now != nil {
		jobs := f.byHost[now.Host]
		if jobs == nil {
			jobs = make(map[string]*proto.Job)
			f.byHost[now.Host] = jobs
		}
		jobs[j.ID] = j
		// A report moves a job along without changing its assignment;
		// a new placement does.
		if was == nil || was.Epoch != now.Epoch {
			f.touchHost(index, now.Host)
		}
	}
}

// touchHost records that host's assignments changed at index and wakes
// its long-polls.
func (f *FSM) touchHost(index uint64, host string) {
	f.hostIndex[host] = index
	if ch, ok := f.hostWake[host]; ok {
		close(ch)
		delete(f.hostWake, host)
	}
}

// storeHost saves a registration (and wakes the host's long-polls: its
// index moved).
func (f *FSM) storeHost(h *proto.Host) {
	f.hosts[h.ID] = h
	f.hostsGen++
	if ch, ok := f.hostWake[h.ID]; ok {
		close(ch)
		delete(f.hostWake, h.ID)
	}
	if f.onChange != nil {
		f.changedHosts = append(f.changedHosts, h)
	}
}

// setState moves j to state at t, emits the event and, for a terminal
// state, finishes it: the finish time and a webhook delivery if the job
// asked for one.
func (f *FSM) setState(index uint64, j *proto.Job, state proto.JobState, t time.Time, errMsg string) {
	j.State = state
	if errMsg != "" {
		j.Error = errMsg
	}
	f.emit(index, j, proto.JobEvent{Type: proto.EventState, Time: t, State: state, Attempt: j.Attempts, Error: errMsg})
	if !state.Terminal() {
		return
	}
	j.FinishedAt = &t
	if j.Spec.Webhook != "" {
		j.Webhooks = append(j.Webhooks, proto.WebhookDelivery{
			ID: fmt.Sprintf("msg_%s_%d", j.ID, index), URL: j.Spec.Webhook, Event: "job." + string(state),
			State: proto.DeliveryPending, CreatedAt: t, NextAt: t,
		})
		f.hooks[j.ID] = struct{}{}
	}
}

func (f *FSM) applySubmit(index uint64, it *proto.SubmitItem) SubmitResult {
	job := &it.Job
	now := job.SubmittedAt
	if key := job.IdempotencyKey; key != "" {
		if e, ok := f.idem[key]; ok && now.Sub(e.At) < IdempotencyWindow {
			if e.Hash != it.RequestHash {
				return SubmitResult{Err: fmt.Errorf("%w: key %q made job %s", ErrIdempotencyConflict, key, e.JobID)}
			}
			if j, ok := f.jobs[e.JobID]; ok {
				return SubmitResult{Job: j, Existing: true}
			}
		}
	}
	if _, ok := f.jobs[job.ID]; ok {
		return SubmitResult{Err: fmt.Errorf("%w: %s", ErrJobExists, job.ID)}
	}
	j := job.Clone()
	j.History = nil
	f.setState(index, j, proto.JobQueued, now, "")
	f.store(index, j)
	if key := job.IdempotencyKey; key != "" {
		f.idem[key] = idemEntry{Key: key, JobID: j.ID, Hash: it.RequestHash, At: now}
		if f.idemAdds++; f.idemAdds%idemSweepEvery == 0 {
			f.sweepIdem(now)
		}
	}
	return SubmitResult{Job: j}
}

// applyPlace records the seq-th placement of the entry at index. Its epoch
// is the pair as one number (index<<16 | seq, the same shape as event
// ids): distinct for every placement ever made, and ordered as the
// scheduler decided, even among the placements of one pass.
// idemSweepEvery is how many new keys pass between sweeps of expired ones.
const idemSweepEvery = 4096

// sweepIdem forgets keys past the window. Lookups check the age anyway, so
// replicas that swept at different moments (one restored from a snapshot)
// still answer alike; this only bounds memory.
func (f *FSM) sweepIdem(now time.Time) {
	for k, e := range f.idem {
		if now.Sub(e.At) >= IdempotencyWindow {
			delete(f.idem, k)
		}
	}
}

func (f *FSM) applyPlace(index uint64, seq int, c *proto.PlaceJob) PlaceResult {
	old, ok := f.jobs[c.JobID]
	if !ok {
		return PlaceResult{Err: fmt.Errorf("%w: %s", ErrJobNotFound, c.JobID)}
	}
	if old.State != proto.JobQueued {
		return PlaceResult{Err: fmt.Errorf("%w: place a %s job", ErrBadTransition, old.State)}
	}
	h, ok := f.hosts[c.Placement.Host]
	if !ok {
		return PlaceResult{Err: fmt.Errorf("%w: %s", ErrHostNotFound, c.Placement.Host)}
	}
	if h.DownAt != nil {
		return PlaceResult{Err: fmt.Errorf("%w: %s", ErrHostDown, h.ID)}
	}
	j := old.Clone()
	p := c.Placement
	p.Epoch = proto.EventID(index, seq)
	p.Models = slices.Clone(p.Models)
	j.Placement = &p
	j.Attempts++
	j.Progress = nil
	j.NotBefore = nil
	f.emit(index, j, proto.JobEvent{Type: proto.EventPlacement, Time: p.PlacedAt, Attempt: j.Attempts, Placement: &p})
	f.setState(index, j, proto.JobPlaced, p.PlacedAt, "")
	f.store(index, j)
	return PlaceResult{Job: j}
}

// stateOrder ranks the forward path of a job; reports may only move forward.
var stateOrder = map[proto.JobState]int{
	proto.JobQueued: 0, proto.JobPlaced: 1, proto.JobFetching: 2, proto.JobLoading: 3,
	proto.JobRunning: 4, proto.JobUploading: 5,
	proto.JobSucceeded: 6, proto.JobFailed: 6, proto.JobCancelled: 6, proto.JobTimedOut: 6,
}

func (f *FSM) applyReport(index uint64, c *proto.ReportJob) any {
	r := &c.Report
	old, ok := f.jobs[r.JobID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, r.JobID)
	}
	if old.Placement == nil || old.Placement.Epoch != r.Epoch || old.Placement.Host != r.HostID {
		return fmt.Errorf("%w: job %s epoch %d from host %s", ErrStaleEpoch, r.JobID, r.Epoch, r.HostID)
	}
	if old.State.Terminal() || !r.State.AgentReportable() || stateOrder[r.State] < stateOrder[old.State] {
		return fmt.Errorf("%w: %s → %s", ErrBadTransition, old.State, r.State)
	}
	j := old.Clone()
	if r.Progress != nil {
		p := *r.Progress
		j.Progress = &p
		f.emit(index, j, proto.JobEvent{Type: proto.EventProgress, Time: r.Time, Attempt: j.Attempts, Progress: &p})
	}
	if j.StartedAt == nil && stateOrder[r.State] >= stateOrder[proto.JobFetching] {
		t := r.Time
		j.StartedAt = &t
	}
	if r.LoadS > 0 {
		j.LoadS = r.LoadS
	}
	if r.RunS > 0 {
		j.RunS = r.RunS
	}
	if len(r.Outputs) > 0 {
		j.Outputs = slices.Clone(r.Outputs)
	}
	if r.State == proto.JobFailed && r.Retryable {
		why := fmt.Sprintf("attempt %d lost on host %s: %s", j.Attempts, r.HostID, r.Error)
		f.requeueOrFail(index, j, r.Time, why, c.Backoff, c.BackoffMax)
	} else if r.State != old.State {
		f.setState(index, j, r.State, r.Time, r.Error)
	} else if r.Error != "" {
		j.Error = r.Error
	}
	f.store(index, j)
	return j
}

func (f *FSM) applyCancel(index uint64, c *proto.CancelJob) any {
	old, ok := f.jobs[c.JobID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, c.JobID)
	}
	if old.State.Terminal() {
		return fmt.Errorf("%w: job %s already %s", ErrBadTransition, old.ID, old.State)
	}
	j := old.Clone()
	f.setState(index, j, proto.JobCancelled, c.Time, cmp.Or(c.Reason, "cancelled by request"))
	f.store(index, j)
	return j
}

func (f *FSM) applyRetry(index uint64, c *proto.RetryJob) any {
	old, ok := f.jobs[c.JobID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, c.JobID)
	}
	if !old.State.Terminal() || old.State == proto.JobSucceeded {
		return fmt.Errorf("%w: only a failed, cancelled or timed-out job can be retried; job %s is %s", ErrBadTransition, old.ID, old.State)
	}
	j := old.Clone()
	j.Attempts, j.Retries = 0, j.Retries+1
	j.Placement, j.Progress, j.NotBefore = nil, nil, nil
	j.StartedAt, j.FinishedAt = nil, nil
	j.Error, j.Outputs, j.LoadS, j.RunS = "", nil, 0, 0
	f.setState(index, j, proto.JobQueued, c.Time, "")
	f.store(index, j)
	return j
}

// HostDownResult says what marking a host down did to its jobs.
type HostDownResult struct {
	Requeued []string
	Failed   []string
}

func (f *FSM) applyHostDown(index uint64, c *proto.MarkHostDown) any {
	old, ok := f.hosts[c.HostID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrHostNotFound, c.HostID)
	}
	h := *old
	t := c.Time
	h.DownAt, h.DownReason, h.Index = &t, c.Reason, index
	f.storeHost(&h)
	var res HostDownResult
	for _, id := range slices.Sorted(maps.Keys(f.live)) {
		j := f.live[id]
		if j.State == proto.JobQueued || j.Placement == nil || j.Placement.Host != h.ID {
			continue
		}
		j = j.Clone()
		why := fmt.Sprintf("attempt %d lost: host %s went down (%s)", j.Attempts, h.ID, c.Reason)
		if f.requeueOrFail(index, j, t, why, c.Backoff, c.BackoffMax) {
			res.Requeued = append(res.Requeued, j.ID)
		} else {
			res.Failed = append(res.Failed, j.ID)
		}
		f.store(index, j)
	}
	return &res
}

// requeueOrFail ends an attempt that was lost through no fault of the job:
// back to queued, placeable after backoff·2^(attempts-1) (at most
// backoffMax), or failed when the job has used its attempts. It reports
// whether the job was requeued; the caller stores j.
func (f *FSM) requeueOrFail(index uint64, j *proto.Job, t time.Time, why string, backoff, backoffMax time.Duration) bool {
	if j.Attempts >= maxAttempts(j) {
		f.setState(index, j, proto.JobFailed, t, fmt.Sprintf("%s; gave up after %d attempts", why, j.Attempts))
		return false
	}
	delay := backoff << min(max(j.Attempts-1, 0), 30)
	if delay <= 0 || delay > backoffMax {
		delay = backoffMax
	}
	nb := t.Add(delay)
	j.NotBefore = &nb
	j.Placement, j.Progress = nil, nil
	f.setState(index, j, proto.JobQueued, t, why)
	j.Error = ""
	return true
}

// DefaultMaxAttempts is a job's placement budget when its spec sets none.
const DefaultMaxAttempts = 3

func maxAttempts(j *proto.Job) int {
	if j.Spec.MaxAttempts > 0 {
		return j.Spec.MaxAttempts
	}
	return DefaultMaxAttempts
}

func (f *FSM) applyTimeouts(index uint64, c *proto.TimeoutJobs) any {
	var ended []string
	for _, it := range c.Items {
		old, ok := f.jobs[it.JobID]
		if !ok || old.State.Terminal() {
			continue
		}
		if it.Epoch == 0 && old.State != proto.JobQueued {
			continue // placed since the leader looked
		}
		if it.Epoch != 0 && (old.Placement == nil || old.Placement.Epoch != it.Epoch) {
			continue // a newer attempt
		}
		j := old.Clone()
		f.setState(index, j, proto.JobTimedOut, c.Time, it.Reason)
		f.store(index, j)
		ended = append(ended, j.ID)
	}
	return ended
}

func (f *FSM) applyWebhookResults(index uint64, c *proto.WebhookResults) any {
	n := 0
	for _, r := range c.Results {
		old, ok := f.jobs[r.JobID]
		if !ok {
			continue
		}
		i := slices.IndexFunc(old.Webhooks, func(d proto.WebhookDelivery) bool { return d.ID == r.DeliveryID })
		if i < 0 || old.Webhooks[i].State != proto.DeliveryPending || old.Webhooks[i].Attempts != r.Attempt {
			continue // another leader's attempt already counted
		}
		j := old.Clone()
		d := &j.Webhooks[i]
		d.Attempts++
		d.LastStatus, d.LastError = r.Status, r.Error
		switch {
		case r.Delivered:
			d.State, d.LastError = proto.DeliveryDelivered, ""
		case r.GiveUp:
			d.State = proto.DeliveryFailed
		default:
			d.NextAt = r.NextAt
		}
		if d.State != proto.DeliveryPending {
			t := r.Time
			d.DoneAt = &t
		}
		if !slices.ContainsFunc(j.Webhooks, func(d proto.WebhookDelivery) bool { return d.State == proto.DeliveryPending }) {
			delete(f.hooks, j.ID)
		}
		// Not f.store: delivery bookkeeping is not a change of the job
		// (its Index stays). A retried job can be live again meanwhile.
		f.jobs[j.ID] = j
		if _, ok := f.live[j.ID]; ok {
			f.fileJob(index, j)
		}
		n++
	}
	return n
}

// Idempotent looks up an Idempotency-Key at time now: the job it made if
// hash matches that request, ErrIdempotencyConflict if it does not, nil if
// the key is unknown or older than IdempotencyWindow.
func (f *FSM) Idempotent(key, hash string, now time.Time) (*proto.Job, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.idem[key]
	if !ok || now.Sub(e.At) >= IdempotencyWindow {
		return nil, nil
	}
	if e.Hash != hash {
		return nil, fmt.Errorf("%w: key %q made job %s", ErrIdempotencyConflict, key, e.JobID)
	}
	return f.jobs[e.JobID], nil
}

// Index returns the last applied log index.
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.index
}

// Watch returns the last applied index and a channel closed by the next
// Apply.
func (f *FSM) Watch() (uint64, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.index, f.changed
}

// Job returns a job by id. The returned value must not be modified.
func (f *FSM) Job(id string) (*proto.Job, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	j, ok := f.jobs[id]
	return j, ok
}

// JobFilter selects jobs for listing; zero fields match everything.
type JobFilter struct {
	State proto.JobState
	Host  string
	Model string // a catalog name the job needs
	After string // return jobs whose id sorts after this (cursor)
	Limit int
}

func (q JobFilter) match(j *proto.Job) bool {
	if q.State != "" && j.State != q.State {
		return false
	}
	if q.Host != "" && (j.Placement == nil || j.Placement.Host != q.Host) {
		return false
	}
	if q.Model != "" && !slices.ContainsFunc(j.Models, func(m proto.ModelRef) bool { return m.Name == q.Model }) {
		return false
	}
	return q.After == "" || strings.Compare(j.ID, q.After) > 0
}

// Jobs lists jobs matching q in id order (ids sort by submit time).
func (f *FSM) Jobs(q JobFilter) []*proto.Job {
	f.mu.RLock()
	out := make([]*proto.Job, 0, min(len(f.jobs), 1024))
	for _, j := range f.jobs {
		if q.match(j) {
			out = append(out, j)
		}
	}
	f.mu.RUnlock()
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

// ActiveJobs returns every job that is queued or placed on a host and not
// yet finished: the scheduler's working set.
func (f *FSM) ActiveJobs() []*proto.Job {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*proto.Job, 0, len(f.live))
	for _, j := range f.live {
		out = append(out, j)
	}
	return out
}

// QueueDepth counts queued jobs by priority.
func (f *FSM) QueueDepth() map[int]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[int]int)
	for _, j := range f.queued {
		out[j.Spec.Priority]++
	}
	return out
}

// Queued returns the jobs waiting for a placement that may be placed at
// now (a requeued job's backoff has passed), in no particular order, and
// counts all queued jobs by priority.
func (f *FSM) Queued(now time.Time) ([]*proto.Job, map[int]int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*proto.Job, 0, len(f.queued))
	depth := make(map[int]int)
	for _, j := range f.queued {
		depth[j.Spec.Priority]++
		if j.NotBefore == nil || !j.NotBefore.After(now) {
			out = append(out, j)
		}
	}
	return out, depth
}

// PendingWebhooks returns the jobs that have a webhook delivery pending.
func (f *FSM) PendingWebhooks() []*proto.Job {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*proto.Job, 0, len(f.hooks))
	for id := range f.hooks {
		out = append(out, f.jobs[id])
	}
	return out
}

// Coordinator returns a coordinator node's addresses by Raft id.
func (f *FSM) Coordinator(id string) (*proto.Coordinator, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c, ok := f.coords[id]
	return c, ok
}

// WatchHost returns the log index at which host's assignments (or its
// registration) last changed and a channel closed when they next change.
func (f *FSM) WatchHost(host string) (uint64, <-chan struct{}) {
	f.mu.RLock()
	idx, ch := f.hostIndexLocked(host), f.hostWake[host]
	f.mu.RUnlock()
	if ch != nil {
		return idx, ch
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ch = f.hostWake[host]
	if ch == nil {
		ch = make(chan struct{})
		f.hostWake[host] = ch
	}
	return f.hostIndexLocked(host), ch
}

func (f *FSM) hostIndexLocked(host string) uint64 {
	idx := f.hostIndex[host]
	if h, ok := f.hosts[host]; ok {
		idx = max(idx, h.Index)
	}
	return idx
}

// Assignments returns the live placements on host as assignments.
func (f *FSM) Assignments(host string) []proto.Assignment {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []proto.Assignment
	for _, j := range f.byHost[host] {
		out = append(out, proto.Assignment{
			JobID: j.ID, Epoch: j.Placement.Epoch, Attempt: j.Attempts,
			GPU: j.Placement.GPU, Slot: j.Placement.Slot,
			Spec: j.Spec, Models: j.Models, Warm: j.Placement.Warm,
		})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Epoch < out[b].Epoch })
	return out
}

// ModelByDigest returns the catalog entry that names digest d (the first
// by name if several do).
func (f *FSM) ModelByDigest(d proto.Digest) (*proto.Model, bool) {
	f.mu.RLock()
	idx := f.byDigest
	f.mu.RUnlock()
	if idx == nil {
		f.mu.Lock()
		if f.byDigest == nil {
			f.byDigest = make(map[proto.Digest]*proto.Model, len(f.models))
			for _, m := range sortedValues(f.models) {
				if _, ok := f.byDigest[m.Digest]; !ok {
					f.byDigest[m.Digest] = m
				}
			}
		}
		idx = f.byDigest
		f.mu.Unlock()
	}
	m, ok := idx[d]
	return m, ok
}

// Model returns a catalog entry by name.
func (f *FSM) Model(name string) (*proto.Model, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.models[name]
	return m, ok
}

// Models lists the catalog by name.
func (f *FSM) Models() []*proto.Model {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.models)
}

// Host returns a registration by id.
func (f *FSM) Host(id string) (*proto.Host, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	h, ok := f.hosts[id]
	return h, ok
}

// Hosts lists registrations by id. The slice is shared until the next
// registration changes: callers must not modify it.
func (f *FSM) Hosts() []*proto.Host {
	f.mu.RLock()
	if f.sortedHosts != nil && f.sortedAt == f.hostsGen {
		defer f.mu.RUnlock()
		return f.sortedHosts
	}
	f.mu.RUnlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sortedHosts == nil || f.sortedAt != f.hostsGen {
		f.sortedHosts, f.sortedAt = sortedValues(f.hosts), f.hostsGen
	}
	return f.sortedHosts
}

// HostCount is the number of registered hosts.
func (f *FSM) HostCount() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.hosts)
}

// SlotReach returns, for a job kind, the largest slot of the registered
// hosts that run it and how many such hosts there are; it is recomputed
// only when a registration changes, so the submit path does not walk the
// fleet.
func (f *FSM) SlotReach(kind string) (largest uint64, takers int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.largest == nil || f.largestAt != f.hostsGen {
		f.largest, f.largestAt = make(map[string]slotReach), f.hostsGen
	}
	r, ok := f.largest[kind]
	if !ok {
		for _, h := range f.hosts {
			if !h.Takes(kind) {
				continue
			}
			r.takers++
			for _, g := range h.GPUs {
				if g.Slots > 0 {
					r.largest = max(r.largest, g.SlotBytes)
				}
			}
		}
		f.largest[kind] = r
	}
	return r.largest, r.takers
}

// sortedValues returns a map's values ordered by their keys (a model's name,
// a host's id), so listings are stable.
func sortedValues[V any](m map[string]V) []V {
	out := make([]V, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

// Counts returns the number of jobs per state, for metrics and /v1/cluster.
func (f *FSM) Counts() map[proto.JobState]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[proto.JobState]int)
	for _, j := range f.jobs {
		out[j.State]++
	}
	return out
}
