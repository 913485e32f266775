package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/coordinator/webhook"
	"github.com/hearth-gpu/hearth/gossip"

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
	// Peers is an explicit initial voter set (this node included): a fresh
	// node bootstraps the group with exactly these servers. Every node of
	// the group must be given the same list.
	Peers []Peer
	// BootstrapExpect, with Join, forms a new group by discovery: the node
	// asks the Join URLs who they are, and once it knows this many nodes
	// (itself included) and none of them leads a group yet, bootstraps them
	// all as voters. With Join alone a fresh node asks the group behind
	// Join to add it as a voter.
	BootstrapExpect int
	Join            []string
	// MinFreeBytes is the free space the data dir must have at start
	// (default 64 MiB): a full disk is refused with a clear error rather
	// than failing at the first log write.
	MinFreeBytes uint64
	// Transport, if set, replaces the TCP Raft transport (tests use raft's
	// in-memory transport to cut the network between nodes).
	Transport raft.Transport

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
	// RequeueBackoff and RequeueBackoffMax shape the delay before a job
	// whose host went down, or whose worker crashed under it, may be placed
	// again: RequeueBackoff·2^(attempt-1), capped (defaults 1 s and 1 min).
	RequeueBackoff    time.Duration
	RequeueBackoffMax time.Duration
	// DefaultTimeout is a job's run timeout when its spec sets none
	// (default 1 h). The agent enforces it; the leader times out a job
	// whose agent has not reported past it plus TimeoutSlack (default 30 s).
	DefaultTimeout time.Duration
	TimeoutSlack   time.Duration

	// Group commit: the leader gathers up to MaxBatch concurrent
	// submissions (default 512) or MaxBatchBytes of them (default 4 MiB)
	// into one Raft entry, with up to MaxInflightBatches entries
	// (default 32) appended but not yet applied.
	MaxBatch           int
	MaxBatchBytes      int
	MaxInflightBatches int

	// WebhookSecret signs webhooks ("whsec_" + base64); empty makes a
	// random one at start and logs that receivers cannot verify across
	// restarts. WebhookAllowHosts, if set, limits webhook URLs to these
	// hosts ("*.example.com" allows subdomains). WebhookSchedule is the
	// retry schedule; WebhookConcurrency bounds deliveries in flight
	// (default 16); WebhookTimeout bounds one attempt (default 10 s).
	WebhookSecret      string
	WebhookAllowHosts  []string
	WebhookSchedule    webhook.Schedule
	WebhookConcurrency int
	WebhookTimeout     time.Duration

	// Tokens enables auth: every request must carry one of these as
	// "Authorization: Bearer <secret>" with a scope that covers the route.
	// None: auth is off (dev). OpenMetrics and OpenHealth leave /metrics
	// and /healthz, /readyz open even with auth on.
	Tokens      []Token
	OpenMetrics bool
	OpenHealth  bool
	// ClusterToken is what this node presents to other coordinators
	// (forwarded writes, joins); it needs the admin scope.
	ClusterToken string

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

	// Gossip, when Gossip.BindAddr is set, joins this node to the pool of
	// agents and coordinators: the leader marks an agent down as soon as
	// gossip declares it dead or it leaves. NodeName, Role and APIAddr are
	// filled in by the coordinator.
	Gossip *gossip.Config
}

// Peer is one Raft voter: its id and Raft address.
type Peer struct {
	ID       string
	RaftAddr string
}

// ParsePeers parses "id=host:port,id=host:port".
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	seen := make(map[string]bool)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peer %q must look like id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: %v", part, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer id %q is listed twice", id)
		}
		seen[id] = true
		out = append(out, Peer{ID: id, RaftAddr: addr})
	}
	return out, nil
}

// DefaultBandwidths are the per-tier rates (bytes/s) measured on the
// reference H200 host (DESIGN.md): vram is free, ram is a safetensors load
// from the page cache, disk is an NVMe read, rack a 25 GbE top-of-rack
// link, peer a 10 GbE link across racks, origin a
// conservative object-store pull.
var DefaultBandwidths = map[proto.Tier]float64{
	proto.TierVRAM:   0, // zero means "no transfer needed"
	proto.TierRAM:    4.9e9,
	proto.TierDisk:   1.5e9,
	proto.TierRack:   2.4e9,
	proto.TierPeer:   1.1e9,
	proto.TierOrigin: 0.25e9,
}

// DefaultConfig returns a single-node dev configuration on the default ports.
func DefaultConfig() Config {
	return Config{
		NodeID:             "coord-1",
		HTTPAddr:           "127.0.0.1:7700",
		RaftAddr:           "127.0.0.1:7701",
		MaxBodyBytes:       16 << 20,
		HeartbeatGrace:     10 * time.Second,
		SchedulerInterval:  time.Second,
		AssignmentWaitMax:  60 * time.Second,
		DefaultBandwidth:   DefaultBandwidths,
		DefaultRunS:        5,
		SnapshotThreshold:  8192,
		SnapshotInterval:   2 * time.Minute,
		MinFreeBytes:       64 << 20,
		RequeueBackoff:     time.Second,
		RequeueBackoffMax:  time.Minute,
		DefaultTimeout:     time.Hour,
		TimeoutSlack:       30 * time.Second,
		MaxBatch:           512,
		MaxBatchBytes:      4 << 20,
		MaxInflightBatches: 32,
		WebhookSchedule:    webhook.DefaultSchedule,
		WebhookConcurrency: 16,
		WebhookTimeout:     10 * time.Second,
		OpenMetrics:        true,
		OpenHealth:         true,
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
	if len(c.Peers) > 0 && (c.Bootstrap || c.BootstrapExpect > 0) {
		errs = append(errs, errors.New("coordinator: config: peers, bootstrap and bootstrap_expect are alternatives; set one"))
	}
	if len(c.Peers) > 0 && !slices.ContainsFunc(c.Peers, func(p Peer) bool { return p.ID == c.NodeID }) {
		errs = append(errs, fmt.Errorf("coordinator: config: peers must include this node (%s)", c.NodeID))
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 9 {
		errs = append(errs, fmt.Errorf("coordinator: config: bootstrap_expect %d must be from 1 to 9", c.BootstrapExpect))
	}
	if c.BootstrapExpect > 1 && len(c.Join) == 0 {
		errs = append(errs, errors.New("coordinator: config: bootstrap_expect needs join: the HTTP URLs of the other nodes"))
	}
	for _, j := range c.Join {
		if u, err := url.Parse(j); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("coordinator: config: join URL %q must look like http://host:port", j))
		}
	}
	if err := c.WebhookSchedule.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: config: webhook schedule: %w", err))
	}
	if c.WebhookSecret != "" {
		if _, err := webhook.ParseSecret(c.WebhookSecret); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: config: webhook_secret: %w", err))
		}
	}
	for i, t := range c.Tokens {
		if err := t.validate(); err != nil {
			errs = append(errs, fmt.Errorf("coordinator: config: token %d: %w", i+1, err))
		}
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
	c.MinFreeBytes = cmp.Or(c.MinFreeBytes, d.MinFreeBytes)
	c.RequeueBackoff = cmp.Or(c.RequeueBackoff, d.RequeueBackoff)
	c.RequeueBackoffMax = cmp.Or(c.RequeueBackoffMax, d.RequeueBackoffMax)
	c.DefaultTimeout = cmp.Or(c.DefaultTimeout, d.DefaultTimeout)
	c.TimeoutSlack = cmp.Or(c.TimeoutSlack, d.TimeoutSlack)
	c.MaxBatch = cmp.Or(c.MaxBatch, d.MaxBatch)
	c.MaxBatchBytes = cmp.Or(c.MaxBatchBytes, d.MaxBatchBytes)
	c.MaxInflightBatches = cmp.Or(c.MaxInflightBatches, d.MaxInflightBatches)
	c.WebhookConcurrency = cmp.Or(c.WebhookConcurrency, d.WebhookConcurrency)
	c.WebhookTimeout = cmp.Or(c.WebhookTimeout, d.WebhookTimeout)
	if c.WebhookSchedule == (webhook.Schedule{}) {
		c.WebhookSchedule = d.WebhookSchedule
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if c.DefaultBandwidth == nil {
		c.DefaultBandwidth = d.DefaultBandwidth
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}
