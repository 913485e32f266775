package coordinator

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/proto"
)

// The FSM is the coordinator's replicated state: jobs, the model catalog,
// host registrations and placements (an assignment is a job's live
// placement, so assignments are derived from jobs rather than stored twice).
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
// and times into a command before proposing it, and epochs come from the log
// index. Every replica thus reaches the same state from the same log.
//
// Watching. Every Apply closes the current `changed` channel and makes a new
// one, so a long-poll can wait for "anything after index N" without polling.
type FSM struct {
	mu      sync.RWMutex
	jobs    map[string]*proto.Job
	models  map[string]*proto.Model
	hosts   map[string]*proto.Host
	index   uint64 // last applied log index
	changed chan struct{}

	// onApply, if set, is called after each applied command outside mu; the
	// server uses it to wake the scheduler and count metrics.
	onApply func(proto.Command, any)
}

// NewFSM returns an empty state machine.
func NewFSM() *FSM {
	return &FSM{
		jobs:    make(map[string]*proto.Job),
		models:  make(map[string]*proto.Model),
		hosts:   make(map[string]*proto.Host),
		changed: make(chan struct{}),
	}
}

// Errors an Apply can return to the proposer. They are results, not
// failures of the log: the entry is committed and every replica refuses it
// the same way.
var (
	ErrJobExists     = errors.New("coordinator: job already exists")
	ErrJobNotFound   = errors.New("coordinator: job not found")
	ErrStaleEpoch    = errors.New("coordinator: report from a stale placement")
	ErrBadTransition = errors.New("coordinator: job state transition not allowed")
	ErrHostNotFound  = errors.New("coordinator: host not registered")
)

// Apply implements raft.FSM.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
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
	res := f.apply(l.Index, cmd)
	f.advance(l.Index)
	cb := f.onApply
	f.mu.Unlock()
	if cb != nil {
		cb(cmd, res)
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
		return &m
	case *proto.SubmitJob:
		if _, ok := f.jobs[c.Job.ID]; ok {
			return fmt.Errorf("%w: %s", ErrJobExists, c.Job.ID)
		}
		j := c.Job.Clone()
		j.State = proto.JobQueued
		j.Index = index
		f.jobs[j.ID] = j
		return j
	case *proto.RegisterHost:
		h := c.Host
		h.Index = index
		f.hosts[h.ID] = &h
		return &h
	case *proto.PlaceJob:
		return f.applyPlace(index, c)
	case *proto.ReportJob:
		return f.applyReport(index, &c.Report)
	}
	return fmt.Errorf("coordinator: apply index %d: no handler for %v", index, cmd.CommandType())
}

func (f *FSM) applyPlace(index uint64, c *proto.PlaceJob) any {
	old, ok := f.jobs[c.JobID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrJobNotFound, c.JobID)
	}
	if old.State != proto.JobQueued {
		return fmt.Errorf("%w: place a %s job", ErrBadTransition, old.State)
	}
	if _, ok := f.hosts[c.Placement.Host]; !ok {
		return fmt.Errorf("%w: %s", ErrHostNotFound, c.Placement.Host)
	}
	j := old.Clone()
	p := c.Placement
	p.Epoch = index
	p.Models = slices.Clone(p.Models)
	j.Placement = &p
	j.State = proto.JobPlaced
	j.Attempts++
	j.Progress = nil
	j.Index = index
	f.jobs[j.ID] = j
	return j
}

// stateOrder ranks the forward path of a job; reports may only move forward.
var stateOrder = map[proto.JobState]int{
	proto.JobQueued: 0, proto.JobPlaced: 1, proto.JobFetching: 2, proto.JobLoading: 3,
	proto.JobRunning: 4, proto.JobUploading: 5,
	proto.JobSucceeded: 6, proto.JobFailed: 6, proto.JobCancelled: 6,
}

func (f *FSM) applyReport(index uint64, r *proto.JobReport) any {
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
	j.State = r.State
	j.Index = index
	if r.Progress != nil {
		p := *r.Progress
		j.Progress = &p
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
	if r.Error != "" {
		j.Error = r.Error
	}
	if r.State.Terminal() {
		t := r.Time
		j.FinishedAt = &t
	}
	f.jobs[j.ID] = j
	return j
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
	var out []*proto.Job
	for _, j := range f.jobs {
		if !j.State.Terminal() {
			out = append(out, j)
		}
	}
	return out
}

// Assignments returns the live placements on host as assignments.
func (f *FSM) Assignments(host string) []proto.Assignment {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []proto.Assignment
	for _, j := range f.jobs {
		if j.State.Terminal() || j.Placement == nil || j.Placement.Host != host {
			continue
		}
		out = append(out, proto.Assignment{
			JobID: j.ID, Epoch: j.Placement.Epoch, Attempt: j.Attempts,
			GPU: j.Placement.GPU, Slot: j.Placement.Slot,
			Spec: j.Spec, Models: j.Models,
		})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Epoch < out[b].Epoch })
	return out
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

// Hosts lists registrations by id.
func (f *FSM) Hosts() []*proto.Host {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.hosts)
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
