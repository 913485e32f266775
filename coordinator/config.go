package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Config holds what a coordinator node needs. Build one with DefaultConfig
// and change what differs.
type Config struct {
	// NodeID names this node in the Raft group; stable across restarts.
	NodeID string
	// DataDir holds the Raft log (raft.db) and snapshots (snapshots/).
	DataDir string
	// HTTPAddr is the API's listen address (default 127.0.0.1:7700).
	HTTPAddr string
	// RaftAddr is the Raft transport's listen and advertise address
	// (default 127.0.0.1:7701). It must be reachable by the other voters.
	RaftAddr string
	// Bootstrap makes a fresh node form a single-voter cluster (dev and
	// demo). It is a no-op when the data dir already holds Raft state.
	Bootstrap bool

	// MaxBodyBytes bounds a request body (default 16 MiB).
	MaxBodyBytes int
	// HeartbeatGrace is how long a host may go without a heartbeat before
	// the scheduler stops placing work on it (default 10 s).
	HeartbeatGrace time.Duration
	// SchedulerInterval is how often the scheduler looks at the queue when
	// nothing wakes it sooner (default 1 s).
	SchedulerInterval time.Duration
	// AssignmentWaitMax caps an agent's long-poll (default 60 s).
	AssignmentWaitMax time.Duration
	// DefaultBandwidth is bytes/s per tier used when a host reported none.
	DefaultBandwidth map[proto.Tier]float64
	// DefaultRunS is the run time the scheduler assumes for a job until it
	// has seen some finish.
	DefaultRunS float64

	// SnapshotThreshold and SnapshotInterval tune how often Raft snapshots
	// (defaults: 8192 entries, 2 min).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	// TrailingLogs is how many entries survive a snapshot's log compaction
	// (default 10240, Raft's own).
	TrailingLogs uint64
	// RaftTimeouts shortens Raft's timers; tests set it for fast elections.
	RaftFastTimeouts bool
	// RaftLogLevel is hashicorp/raft's own log level (default "warn").
	RaftLogLevel string

	Logger *slog.Logger
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// DefaultBandwidths are the per-tier rates (bytes/s) measured on the
// reference H200 host (DESIGN.md): vram is free, ram is a safetensors load
// from the page cache, disk is an NVMe read, peer a 10 GbE link, origin a
// conservative object-store pull.
var DefaultBandwidths = map[proto.Tier]float64{
	proto.TierVRAM:   0, // zero means "no transfer needed"
	proto.TierRAM:    4.9e9,
	proto.TierDisk:   1.5e9,
	proto.TierPeer:   1.1e9,
	proto.TierOrigin: 0.25e9,
}

// DefaultConfig returns a single-node dev configuration on the default ports.
func DefaultConfig() Config {
	return Config{
		NodeID:            "coord-1",
		HTTPAddr:          "127.0.0.1:7700",
		RaftAddr:          "127.0.0.1:7701",
		MaxBodyBytes:      16 << 20,
		HeartbeatGrace:    10 * time.Second,
		SchedulerInterval: time.Second,
		AssignmentWaitMax: 60 * time.Second,
		DefaultBandwidth:  DefaultBandwidths,
		DefaultRunS:       5,
		SnapshotThreshold: 8192,
		SnapshotInterval:  2 * time.Minute,
	}
}

// ValidateConfig reports the first problem with c, naming the field.
func ValidateConfig(c *Config) error {
	var errs []error
	if c.NodeID == "" {
		errs = append(errs, errors.New("coordinator: config: node_id must be set"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("coordinator: config: data_dir must be set"))
	}
	if c.HTTPAddr == "" || c.RaftAddr == "" {
		errs = append(errs, errors.New("coordinator: config: http_addr and raft_addr must be set"))
	}
	if c.MaxBodyBytes <= 0 {
		errs = append(errs, fmt.Errorf("coordinator: config: max_body_bytes %d must be positive", c.MaxBodyBytes))
	}
	if c.HeartbeatGrace <= 0 || c.SchedulerInterval <= 0 || c.AssignmentWaitMax <= 0 {
		errs = append(errs, errors.New("coordinator: config: heartbeat_grace, scheduler_interval and assignment_wait_max must be positive"))
	}
	return errors.Join(errs...)
}

func (c *Config) fillDefaults() {
	d := DefaultConfig()
	c.MaxBodyBytes = cmp.Or(c.MaxBodyBytes, d.MaxBodyBytes)
	c.HeartbeatGrace = cmp.Or(c.HeartbeatGrace, d.HeartbeatGrace)
	c.SchedulerInterval = cmp.Or(c.SchedulerInterval, d.SchedulerInterval)
	c.AssignmentWaitMax = cmp.Or(c.AssignmentWaitMax, d.AssignmentWaitMax)
	c.DefaultRunS = cmp.Or(c.DefaultRunS, d.DefaultRunS)
	c.SnapshotThreshold = cmp.Or(c.SnapshotThreshold, d.SnapshotThreshold)
	c.SnapshotInterval = cmp.Or(c.SnapshotInterval, d.SnapshotInterval)
	c.TrailingLogs = cmp.Or(c.TrailingLogs, 10240) // Raft's own default
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.DefaultBandwidth == nil {
		c.DefaultBandwidth = d.DefaultBandwidth
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}
