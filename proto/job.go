package proto

import (
	"encoding/json"
	"time"
)

// JobState is where a job is in its life. The order of the constants is the
// order a successful job passes through them.
type JobState string

const (
	JobQueued    JobState = "queued"    // accepted, waiting for a placement
	JobPlaced    JobState = "placed"    // assigned to a host/GPU/slot, not yet picked up
	JobFetching  JobState = "fetching"  // the agent is bringing models into its cache
	JobLoading   JobState = "loading"   // the agent is loading models into the slot's worker
	JobRunning   JobState = "running"   // the worker is executing the job
	JobUploading JobState = "uploading" // outputs are being stored
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobCancelled JobState = "cancelled"
)

// Terminal reports whether no further transition can follow s.
func (s JobState) Terminal() bool {
	return s == JobSucceeded || s == JobFailed || s == JobCancelled
}

// Valid reports whether s is one of the known states.
func (s JobState) Valid() bool {
	switch s {
	case JobQueued, JobPlaced, JobFetching, JobLoading, JobRunning, JobUploading,
		JobSucceeded, JobFailed, JobCancelled:
		return true
	}
	return false
}

// AgentReportable reports whether an agent may move a job into s: agents
// report progress through a placement, never back to queued or placed.
func (s JobState) AgentReportable() bool {
	switch s {
	case JobFetching, JobLoading, JobRunning, JobUploading, JobSucceeded, JobFailed:
		return true
	}
	return false
}

// Priority bounds: higher runs first. Anything outside is refused as absurd.
const (
	MinPriority = -1000
	MaxPriority = 1000
)

// JobSpec is what a client submits. Exactly one of Workflow, Worker or Exec
// is set.
type JobSpec struct {
	// Workflow is a ComfyUI API-format prompt: node id → {class_type, inputs}.
	Workflow json.RawMessage `json:"workflow,omitempty"`
	// Worker is a payload for a long-lived worker runner.
	Worker *WorkerPayload `json:"worker,omitempty"`
	// Exec runs one process for the job; nothing stays warm.
	Exec     *ExecPayload      `json:"exec,omitempty"`
	Priority int               `json:"priority,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
}

// WorkerPayload is handed as-is to a worker's run call; Models names the
// catalog entries it needs loaded first.
type WorkerPayload struct {
	Models []string        `json:"models,omitempty"`
	Input  json.RawMessage `json:"input,omitempty"`
}

// ExecPayload runs Command (argv, no shell) once per job.
type ExecPayload struct {
	Command []string          `json:"command"`
	Env     map[string]string `json:"env,omitempty"`
	Models  []string          `json:"models,omitempty"`
}

// Kind names which payload the spec carries.
func (s *JobSpec) Kind() string {
	switch {
	case len(s.Workflow) > 0:
		return "workflow"
	case s.Worker != nil:
		return "worker"
	case s.Exec != nil:
		return "exec"
	}
	return ""
}

// ModelRef is a model a job needs, resolved against the catalog at submit
// time, so a later catalog change cannot alter an accepted job.
type ModelRef struct {
	Name   string `json:"name"`
	Digest Digest `json:"digest"`
	Size   int64  `json:"size"`
	Origin string `json:"origin"`
	// Node and Input say where in a workflow the name came from.
	Node  string `json:"node,omitempty"`
	Input string `json:"input,omitempty"`
}

// Tier is where a model's bytes sit relative to a slot, fastest first.
type Tier string

const (
	TierVRAM   Tier = "vram"   // resident in the slot's worker
	TierRAM    Tier = "ram"    // resident in host memory
	TierDisk   Tier = "disk"   // on the host's NVMe cache
	TierPeer   Tier = "peer"   // another host in the pool has it
	TierOrigin Tier = "origin" // only the object store has it
)

// Tiers lists every tier, fastest first.
var Tiers = []Tier{TierVRAM, TierRAM, TierDisk, TierPeer, TierOrigin}

// ModelPlacement is one model's tier on the chosen slot and the seconds the
// scheduler expected it to take to bring it into the worker.
type ModelPlacement struct {
	Name     string  `json:"name"`
	Digest   Digest  `json:"digest"`
	Tier     Tier    `json:"tier"`
	Seconds  float64 `json:"seconds"`
	SizeByte int64   `json:"size"`
}

// Placement is the scheduler's decision for one attempt of a job.
type Placement struct {
	Host string `json:"host"`
	GPU  int    `json:"gpu"`
	Slot int    `json:"slot"`
	// Epoch identifies this placement; an agent's report must carry it, so a
	// report from an older placement of the same job is refused.
	Epoch      uint64           `json:"epoch"`
	Models     []ModelPlacement `json:"models"`
	QueueWaitS float64          `json:"queue_wait_s"`
	EstimateS  float64          `json:"estimate_s"`
	PlacedAt   time.Time        `json:"placed_at"`
}

// Progress is a running job's latest progress report.
type Progress struct {
	Value int    `json:"value"`
	Max   int    `json:"max"`
	Node  string `json:"node,omitempty"`
}

// Output is one file a job produced.
type Output struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Digest Digest `json:"digest"`
	URL    string `json:"url"`
}

// Job is the coordinator's record of a job, as the API returns it.
type Job struct {
	ID          string     `json:"id"`
	Spec        JobSpec    `json:"spec"`
	Models      []ModelRef `json:"models"`
	State       JobState   `json:"state"`
	Attempts    int        `json:"attempts"`
	Placement   *Placement `json:"placement,omitempty"`
	Progress    *Progress  `json:"progress,omitempty"`
	SubmittedAt time.Time  `json:"submitted_at"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	// LoadS is the time spent bringing models into the worker (fetch + load);
	// RunS the time the worker spent executing.
	LoadS   float64  `json:"load_s"`
	RunS    float64  `json:"run_s"`
	Outputs []Output `json:"outputs,omitempty"`
	Error   string   `json:"error,omitempty"`
	// Index is the Raft index of the entry that last changed the job.
	Index uint64 `json:"index"`
}

// Clone returns a deep copy, so a reader can hold a Job while the FSM moves on.
func (j *Job) Clone() *Job {
	c := *j
	c.Models = append([]ModelRef(nil), j.Models...)
	c.Outputs = append([]Output(nil), j.Outputs...)
	if j.Placement != nil {
		p := *j.Placement
		p.Models = append([]ModelPlacement(nil), j.Placement.Models...)
		c.Placement = &p
	}
	if j.Progress != nil {
		p := *j.Progress
		c.Progress = &p
	}
	return &c
}
