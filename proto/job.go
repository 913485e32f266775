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
	JobTimedOut  JobState = "timed_out" // ran past its timeout, or waited in the queue past its TTL
)

// Terminal reports whether no further transition can follow s.
func (s JobState) Terminal() bool {
	return s == JobSucceeded || s == JobFailed || s == JobCancelled || s == JobTimedOut
}

// Valid reports whether s is one of the known states.
func (s JobState) Valid() bool {
	switch s {
	case JobQueued, JobPlaced, JobFetching, JobLoading, JobRunning, JobUploading,
		JobSucceeded, JobFailed, JobCancelled, JobTimedOut:
		return true
	}
	return false
}

// AgentReportable reports whether an agent may move a job into s: agents
// report progress through a placement, never back to queued or placed.
func (s JobState) AgentReportable() bool {
	switch s {
	case JobFetching, JobLoading, JobRunning, JobUploading, JobSucceeded, JobFailed, JobTimedOut:
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

	// TimeoutS bounds one attempt's run, from pickup to the final report;
	// the agent stops the run and the job ends timed_out. Zero: the
	// coordinator's default.
	TimeoutS float64 `json:"timeout_s,omitempty"`
	// QueueTTLS bounds how long the job may wait for a placement before it
	// ends timed_out. Zero: no limit.
	QueueTTLS float64 `json:"queue_ttl_s,omitempty"`
	// MaxAttempts bounds placements: a job whose host goes down is requeued
	// until it has been placed this many times, then fails. Zero: the
	// coordinator's default (3).
	MaxAttempts int `json:"max_attempts,omitempty"`
	// VRAMBytes is the GPU memory one attempt needs (weights, activations,
	// latents). The scheduler places the job only on a slot at least this
	// large, and at least as large as its models; a job no registered host
	// could ever hold is refused at submit with 422. Zero: its models' size.
	VRAMBytes int64 `json:"vram_bytes,omitempty"`
	// Webhook is an http(s) URL that receives a signed POST when the job
	// reaches a terminal state.
	Webhook string `json:"webhook,omitempty"`
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
	// ChunkSize and Chunks are the catalog's chunk digests (Model.Chunks).
	ChunkSize int64    `json:"chunk_size,omitempty"`
	Chunks    []Digest `json:"chunks,omitempty"`
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
	TierRack   Tier = "rack"   // another host in the same rack has it
	TierPeer   Tier = "peer"   // another host in the pool has it
	TierOrigin Tier = "origin" // only the object store has it
)

// Tiers lists every tier, fastest first.
var Tiers = []Tier{TierVRAM, TierRAM, TierDisk, TierRack, TierPeer, TierOrigin}

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
	// report from an older placement of the same job is refused. It is the
	// Raft index of the entry that made the placement, shifted left 16
	// bits, plus the placement's position in that entry: unique, and
	// ordered as the scheduler placed.
	Epoch      uint64           `json:"epoch"`
	Models     []ModelPlacement `json:"models"`
	QueueWaitS float64          `json:"queue_wait_s"`
	EstimateS  float64          `json:"estimate_s"`
	PlacedAt   time.Time        `json:"placed_at"`
	// Warm are models the slot should load once this job is done, if no
	// other job waits for it: what jobs of this kind were most often
	// asked for with besides. Advice: the agent loads only what fits
	// beside what the worker holds. Chunk digests are left out.
	Warm []ModelRef `json:"warm,omitempty"`
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
	ID     string     `json:"id"`
	Spec   JobSpec    `json:"spec"`
	Models []ModelRef `json:"models"`
	State  JobState   `json:"state"`
	// Attempts counts placements since submission or the last manual
	// retry; Retries counts manual retries.
	Attempts int `json:"attempts"`
	Retries  int `json:"retries,omitempty"`
	// NotBefore holds a requeued job back from placement until then, so a
	// job that keeps losing its host backs off.
	NotBefore   *time.Time `json:"not_before,omitempty"`
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
	// IdempotencyKey is the client's Idempotency-Key header, if it sent one.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// History lists the job's state and placement events, oldest first;
	// progress is not kept here (only the latest, in Progress).
	History []JobEvent `json:"history,omitempty"`
	// Webhooks is the delivery state of the job's webhook, one entry per
	// terminal state it reached (a retried job can end more than once).
	Webhooks []WebhookDelivery `json:"webhooks,omitempty"`
	// Index is the Raft index of the entry that last changed the job.
	Index uint64 `json:"index"`
}

// Event types of a job's event stream.
const (
	EventState     = "state"     // the job moved to another state
	EventPlacement = "placement" // the scheduler placed the job
	EventProgress  = "progress"  // a running job reported progress
)

// JobEvent is one entry of a job's event stream (SSE) and history. ID is
// cluster-wide and the same on every coordinator node: the Raft index of
// the entry that caused it, shifted left 16 bits, plus its position among
// that entry's events. A client can thus resume on any node.
type JobEvent struct {
	ID        uint64     `json:"id"`
	Type      string     `json:"type"`
	JobID     string     `json:"job_id"`
	Time      time.Time  `json:"time"`
	State     JobState   `json:"state,omitempty"`
	Attempt   int        `json:"attempt,omitempty"`
	Error     string     `json:"error,omitempty"`
	Placement *Placement `json:"placement,omitempty"`
	Progress  *Progress  `json:"progress,omitempty"`
}

// EventID composes a JobEvent ID from a log index and a position.
func EventID(index uint64, seq int) uint64 { return index<<16 | uint64(seq&0xffff) }

// EventIndex returns the log index an event ID came from.
func EventIndex(id uint64) uint64 { return id >> 16 }

// Delivery states of a webhook.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed" // gave up after the retry window, or the receiver refused for good
)

// WebhookDelivery is one webhook message and where its delivery stands.
// It lives in the replicated state, so a new leader carries on delivering
// what the old one had not finished: delivery is at least once.
type WebhookDelivery struct {
	// ID is the Standard Webhooks webhook-id, the same on every retry so
	// receivers can deduplicate.
	ID         string     `json:"id"`
	URL        string     `json:"url"`
	Event      string     `json:"event"` // job.succeeded, job.failed, job.cancelled, job.timed_out
	State      string     `json:"state"`
	Attempts   int        `json:"attempts"`
	CreatedAt  time.Time  `json:"created_at"`
	NextAt     time.Time  `json:"next_at"`
	LastStatus int        `json:"last_status,omitempty"`
	LastError  string     `json:"last_error,omitempty"`
	DoneAt     *time.Time `json:"done_at,omitempty"`
}

// Clone returns a deep copy, so a reader can hold a Job while the FSM moves on.
func (j *Job) Clone() *Job {
	c := *j
	c.Models = append([]ModelRef(nil), j.Models...)
	c.Outputs = append([]Output(nil), j.Outputs...)
	c.History = append([]JobEvent(nil), j.History...)
	c.Webhooks = append([]WebhookDelivery(nil), j.Webhooks...)
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
