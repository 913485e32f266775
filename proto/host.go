package proto

import (
	"fmt"
	"time"
)

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
	// Runner is what holds models on the host's slots: "worker" (a
	// long-lived worker process that unloads its least recently used
	// models to make room, and can load models ahead of a job) or
	// "comfyui" (a ComfyUI server, which frees all its models when one
	// more does not fit, and loads only inside a prompt). Empty: worker.
	// The scheduler predicts a slot's residency by it.
	Runner string `json:"runner,omitempty"`
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
	// Resident are the digests the slot's worker holds (the vram tier),
	// most recently used first: the last one is what the worker unloads
	// first when a job needs room.
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
//
// The cache inventory travels in one of two ways. Inventory (this
// protocol's way) carries only what changed since the version the
// coordinator last acknowledged, and nothing at all when nothing did; see
// InventoryDelta. Cache (the older way, still understood) carries the whole
// inventory in every beat, and replaces what the coordinator held; a beat
// must not carry both. A beat with neither leaves the inventory as it was.
type Heartbeat struct {
	Proto  int         `json:"proto"`
	HostID string      `json:"host_id"`
	Time   time.Time   `json:"time"`
	Slots  []SlotState `json:"slots"`
	// Cache, when not nil, is the host's whole inventory (an empty list is
	// an empty cache): the older agents' way, one full list per beat.
	Cache []CachedBlob `json:"cache,omitzero"`
	// Inventory, when set, changes the host's cache inventory; nil means
	// unchanged since the version the coordinator last acknowledged.
	// A full inventory (Base 0) replaces whatever the coordinator held.
	Inventory *InventoryDelta `json:"inventory,omitempty"`
	GPUs      []GPUState      `json:"gpus,omitempty"`
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

// MaxInventoryChange bounds the entries (Added plus Removed) of one
// InventoryDelta: far more blobs than any host's cache holds.
const MaxInventoryChange = 100_000

// InventoryDelta is a change of a host's cache inventory from version Base
// to version Version. Base 0 means Added is the whole inventory.
//
// The exchange, per agent process:
//
//   - Versions are chosen by the agent and only grow: each inventory it
//     sends gets a number above every one it sent before, and a new
//     process starts above any earlier one's (from the clock, in
//     microseconds), so a coordinator never mistakes one for another.
//   - The coordinator applies a delta only onto the version it is built
//     on (Base equal to the version it holds) and then holds Version. A
//     full inventory replaces what it holds unless Version is not above
//     the held version (a late copy of an older beat, from a retry): that
//     one is ignored.
//   - Every answer (HeartbeatAck) names the version the coordinator holds
//     now, or 0 when it holds none (a new leader, a delta on a base it
//     did not have, an inventory it only knows from Cache). An agent that
//     hears a version it did not just send, or 0, sends its whole
//     inventory next, numbered above the version it heard. Nothing is
//     ever applied twice or out of order, so duplicated, reordered or
//     lost requests cost at most one full inventory.
type InventoryDelta struct {
	Base    uint64       `json:"base"`
	Version uint64       `json:"version"`
	Added   []CachedBlob `json:"added,omitempty"` // new blobs, or blobs whose tier changed
	Removed []Digest     `json:"removed,omitempty"`
}

// Full reports whether d is a whole inventory rather than a change.
func (d *InventoryDelta) Full() bool { return d.Base == 0 }

// Validate checks a beat's inventory: Cache and Inventory not both set, and
// a delta that is well formed (see InventoryDelta.Validate).
func (b *Heartbeat) Validate() *FieldError {
	if b.Inventory == nil {
		return nil
	}
	if b.Cache != nil {
		return &FieldError{Field: "inventory", Message: "a heartbeat carries its cache either as a full list (cache) or as a change (inventory), not both"}
	}
	return b.Inventory.Validate()
}

// Validate checks a delta: Version above Base, at most MaxInventoryChange
// entries, each digest well formed and named once, tiers ram or disk,
// sizes not negative.
func (d *InventoryDelta) Validate() *FieldError {
	if d.Version <= d.Base {
		return &FieldError{Field: "inventory.version", Message: fmt.Sprintf("version %d must be above base %d", d.Version, d.Base)}
	}
	if n := len(d.Added) + len(d.Removed); n > MaxInventoryChange {
		return &FieldError{Field: "inventory", Message: fmt.Sprintf("%d entries in one change, more than %d", n, MaxInventoryChange)}
	}
	if d.Full() && len(d.Removed) > 0 {
		return &FieldError{Field: "inventory.removed", Message: "a full inventory (base 0) removes nothing; list what the cache holds in added"}
	}
	seen := make(map[Digest]struct{}, len(d.Added)+len(d.Removed))
	once := func(dg Digest, field string, i int) *FieldError {
		if err := dg.Validate(); err != nil {
			return &FieldError{Field: field, Message: fmt.Sprintf("entry %d: %v", i, err)}
		}
		if _, dup := seen[dg]; dup {
			return &FieldError{Field: field, Message: fmt.Sprintf("entry %d: %s is named twice in one change", i, dg)}
		}
		seen[dg] = struct{}{}
		return nil
	}
	for i, cb := range d.Added {
		if fe := once(cb.Digest, "inventory.added", i); fe != nil {
			return fe
		}
		if cb.Tier != TierRAM && cb.Tier != TierDisk {
			return &FieldError{Field: "inventory.added", Message: fmt.Sprintf("entry %d: tier %q must be %q or %q", i, cb.Tier, TierRAM, TierDisk)}
		}
		if cb.Size < 0 {
			return &FieldError{Field: "inventory.added", Message: fmt.Sprintf("entry %d: size %d must not be negative", i, cb.Size)}
		}
	}
	for i, dg := range d.Removed {
		if fe := once(dg, "inventory.removed", i); fe != nil {
			return fe
		}
	}
	return nil
}

// HeartbeatAck is the coordinator's answer to a heartbeat.
type HeartbeatAck struct {
	// Index is the coordinator's Raft index.
	Index uint64 `json:"index"`
	// InventoryVersion is the inventory version the coordinator now holds
	// for the host; 0 when it holds none (a new leader, or a delta whose
	// Base it did not have): the agent must send its whole inventory.
	InventoryVersion uint64 `json:"inventory_version"`
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
	// Warm is the placement's advice of what to load after the job
	// (Placement.Warm).
	Warm []ModelRef `json:"warm,omitempty"`
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
