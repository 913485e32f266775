package proto

import "time"

// HostStatus is the coordinator's view of a host's health.
type HostStatus string

const (
	HostReady    HostStatus = "ready"
	HostDown     HostStatus = "down"
	HostDraining HostStatus = "draining"
	// HostDegraded hosts heartbeat but report a fault (a GPU too hot, an
	// NVML error, a device gone): they take no new placements until it
	// clears, and their running jobs go on.
	HostDegraded HostStatus = "degraded"
	// HostDrained hosts are draining (they take no new placements) and
	// have no placed or running job left: they can be stopped without
	// losing work.
	HostDrained HostStatus = "drained"
)

// GPU describes one device and how the agent carved it into slots.
type GPU struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	MemoryTotal uint64 `json:"memory_total"`
	// MemoryReserved is held back from the slot pool (driver, other tenants).
	MemoryReserved uint64 `json:"memory_reserved"`
	SlotBytes      uint64 `json:"slot_bytes"`
	Slots          int    `json:"slots"`
}

// Host is a GPU host as registered with the coordinator.
type Host struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// DeviceKind is "nvml" for real GPUs or "simulated".
	DeviceKind string            `json:"device_kind"`
	GPUs       []GPU             `json:"gpus"`
	Labels     map[string]string `json:"labels,omitempty"`
	// Bandwidth is bytes/s for bringing a model from each tier into a slot's
	// worker, as the agent measured or was configured with.
	Bandwidth    map[Tier]float64 `json:"bandwidth"`
	Version      string           `json:"version,omitempty"`
	RegisteredAt time.Time        `json:"registered_at"`
	Index        uint64           `json:"index,omitempty"`
	// DownAt is set while the coordinator considers the host down (it
	// missed heartbeats past the grace); its next registration clears it.
	DownAt     *time.Time `json:"down_at,omitempty"`
	DownReason string     `json:"down_reason,omitempty"`
	// Drain is set by an operator (POST /v1/hosts/{id}/drain): the host
	// takes no new placements until the drain is cleared. It survives the
	// agent's restarts and re-registrations, as DrainSince does.
	Drain      bool       `json:"drain,omitempty"`
	DrainSince *time.Time `json:"drain_since,omitempty"`
	// PeerFetch is set by a host that is in the gossip pool and fetches
	// models from, and serves them to, other hosts; the scheduler counts
	// the peer tiers only between such hosts.
	PeerFetch bool `json:"peer_fetch,omitempty"`
	// Gossip is the host's state in the answering coordinator's gossip
	// pool (alive, suspect, dead, left), or empty when that coordinator is
	// not in one or has not seen the host there. It is a view, not part of
	// the replicated record.
	Gossip string `json:"gossip,omitempty"`
	// Kinds are the job kinds the host's runners take ("workflow",
	// "worker", "exec"); empty means every kind. A host whose slots run
	// ComfyUI servers takes workflow and exec jobs, not worker payloads.
	Kinds []string `json:"kinds,omitempty"`
}

// Takes reports whether the host runs jobs of kind.
func (h *Host) Takes(kind string) bool {
	if len(h.Kinds) == 0 {
		return true
	}
	for _, k := range h.Kinds {
		if k == kind {
			return true
		}
	}
	return false
}

// CachedBlob is a blob held on a host outside any worker.
type CachedBlob struct {
	Digest Digest `json:"digest"`
	Size   int64  `json:"size"`
	Tier   Tier   `json:"tier"` // ram or disk
}

// SlotState is the live state of one slot, sent in heartbeats.
type SlotState struct {
	GPU  int `json:"gpu"`
	Slot int `json:"slot"`
	// Resident are the digests the slot's worker holds (the vram tier).
	Resident []Digest `json:"resident,omitempty"`
	// Running is the job the slot is executing, if any; Queued the jobs
	// assigned to it behind that one.
	Running string   `json:"running,omitempty"`
	Queued  []string `json:"queued,omitempty"`
	// Blocked, when set, says why the slot takes no placements: its memory
	// is held by GPU processes the agent does not manage.
	Blocked string `json:"blocked,omitempty"`
}

// GPUState is one GPU's live reading and slot-pool occupancy, sent in
// heartbeats for operators (the scheduler reads slots, not these).
type GPUState struct {
	Index      int    `json:"index"`
	MemoryUsed uint64 `json:"memory_used"`
	// ForeignBytes is memory held by compute processes the agent does not
	// manage; whole slots are taken out of service to cover it.
	ForeignBytes   uint64  `json:"foreign_bytes,omitempty"`
	TemperatureC   int     `json:"temperature_c"`
	UtilizationPct int     `json:"utilization_pct"`
	ECCUncorrected uint64  `json:"ecc_uncorrected,omitempty"`
	MIG            bool    `json:"mig,omitempty"`
	Fault          string  `json:"fault,omitempty"`
	FreeSlots      int     `json:"free_slots"`
	LargestFreeRun int     `json:"largest_free_run"`
	Fragmentation  float64 `json:"fragmentation"`
}

// Heartbeat is an agent's periodic report of its live state. It is held in
// the leader's memory, not in the Raft log: it changes every few seconds and
// is rebuilt from the next beat after a leader change.
type Heartbeat struct {
	Proto  int          `json:"proto"`
	HostID string       `json:"host_id"`
	Time   time.Time    `json:"time"`
	Slots  []SlotState  `json:"slots"`
	Cache  []CachedBlob `json:"cache"`
	GPUs   []GPUState   `json:"gpus,omitempty"`
	// Draining hosts take no new placements. An agent that is shutting
	// down sets it, so nothing new lands there while its running jobs
	// finish; unlike an operator's drain (Host.Drain) it lasts only as
	// long as that agent process.
	Draining bool `json:"draining,omitempty"`
	// Degraded, when set, says why the host takes no new placements now
	// (GPU over its temperature limit, NVML failing, a device gone); it
	// clears on its own when the fault does.
	Degraded string `json:"degraded,omitempty"`
}

// HostView is a host as the API lists it: registration plus live state.
type HostView struct {
	Host
	Status HostStatus `json:"status"`
	// DegradedReason says why a degraded host takes no placements.
	DegradedReason string       `json:"degraded_reason,omitempty"`
	LastHeartbeat  *time.Time   `json:"last_heartbeat,omitempty"`
	Slots          []SlotState  `json:"slots"`
	Cache          []CachedBlob `json:"cache"`
	GPUStates      []GPUState   `json:"gpu_states,omitempty"`
	// ActiveJobs counts the jobs placed on the host and not yet finished:
	// a draining host is drained once it reaches 0.
	ActiveJobs int `json:"active_jobs"`
}

// Registration is the body an agent sends when it starts.
type Registration struct {
	Proto int  `json:"proto"`
	Host  Host `json:"host"`
}

// Assignment tells an agent to run one attempt of a job in a slot.
type Assignment struct {
	JobID   string     `json:"job_id"`
	Epoch   uint64     `json:"epoch"`
	Attempt int        `json:"attempt"`
	GPU     int        `json:"gpu"`
	Slot    int        `json:"slot"`
	Spec    JobSpec    `json:"spec"`
	Models  []ModelRef `json:"models"`
	Cancel  bool       `json:"cancel,omitempty"`
}

// Assignments is the long-poll answer: every live assignment for the host,
// and the index to pass as ?index= to wait for the next change.
type Assignments struct {
	Index       uint64       `json:"index"`
	Assignments []Assignment `json:"assignments"`
}

// JobReport is an agent's report of a job's transition in its placement.
type JobReport struct {
	JobID    string    `json:"job_id"`
	HostID   string    `json:"host_id"`
	Epoch    uint64    `json:"epoch"`
	State    JobState  `json:"state"`
	Error    string    `json:"error,omitempty"`
	Progress *Progress `json:"progress,omitempty"`
	LoadS    float64   `json:"load_s,omitempty"`
	RunS     float64   `json:"run_s,omitempty"`
	Outputs  []Output  `json:"outputs,omitempty"`
	// Retryable marks a failure that was not the job's doing (its worker or
	// ComfyUI server crashed under it): the coordinator requeues the job,
	// with backoff, while it has attempts left.
	Retryable bool      `json:"retryable,omitempty"`
	Time      time.Time `json:"time"`
}

// APIError is the body of every error answer:
// {"error": {"code", "message", "field"}}.
type APIError struct {
	Error ErrorBody `json:"error"`
}

// ErrorBody carries a machine-readable code, a sentence for people, and the
// offending field where there is one.
type ErrorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// Leader is the HTTP address of the Raft leader, when a node that cannot
	// serve a write knows it: a hint where to retry.
	Leader string `json:"leader,omitempty"`
}

// Deregistration is the body an agent sends when it stops on purpose: the
// coordinator marks the host down at once (requeueing whatever it still
// had) instead of waiting out the heartbeat grace. The agent's next
// registration brings the host back.
type Deregistration struct {
	Proto  int    `json:"proto"`
	HostID string `json:"host_id"`
	Reason string `json:"reason,omitempty"`
}

// DrainRequest is the optional body of POST /v1/hosts/{id}/drain; Drain
// defaults to true, and false makes the host eligible again.
type DrainRequest struct {
	Drain *bool `json:"drain,omitempty"`
}
