package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// Role says what a member does in the cluster.
type Role string

const (
	RoleAgent       Role = "agent"
	RoleCoordinator Role = "coordinator"
)

// DefaultPort is the agent's gossip port (see DESIGN.md, default ports).
const DefaultPort = 7711

// Config configures a Pool. Start from DefaultConfig; New validates it.
type Config struct {
	// NodeName names this member; unique in the cluster (the host name by
	// default).
	NodeName string
	Role     Role

	// BindAddr is the IP:port gossip listens on, UDP and TCP. Port 0 picks a
	// free port (tests); LocalNode reports the one picked.
	BindAddr string
	// AdvertiseAddr is the IP:port other members should use to reach this
	// one, when it differs from BindAddr (NAT, a wildcard bind). Optional.
	AdvertiseAddr string

	// Join lists host:port addresses of members to join at start. Empty
	// starts a new cluster of one, which others can join.
	Join []string
	// JoinTimeout bounds how long New keeps retrying Join while no listed
	// member answers (they may still be starting). Zero tries once.
	JoinTimeout time.Duration

	// SecretKeys encrypt and authenticate gossip with AES-GCM. Each key is
	// 16, 24 or 32 bytes (AES-128, -192, -256); the first one encrypts,
	// all of them decrypt, which is how a key is rotated without a split.
	// Empty turns encryption off, which New logs as a warning.
	SecretKeys [][]byte
	// Label is prefixed to every packet and stream; a member drops traffic
	// carrying another label, so two clusters on one network never merge.
	// At most 255 bytes; it is not secret, the keys are.
	Label string

	// APIAddr, BlobAddr and Labels go into this member's NodeMeta.
	APIAddr  string
	BlobAddr string
	// Labels place the member, for example zone and rack.
	Labels map[string]string

	// Logger receives the pool's and memberlist's logs.
	Logger *slog.Logger

	// ProbeInterval, GossipInterval and PushPullInterval override
	// memberlist.DefaultLANConfig when non-zero; tests shorten them.
	ProbeInterval    time.Duration
	GossipInterval   time.Duration
	PushPullInterval time.Duration

	// Events, if set, is called for every membership change, one at a time
	// and in order, from a goroutine of the pool's own, so it may call back
	// into the Pool. It must not block for long: later events queue behind it.
	Events func(Event)
}

// DefaultConfig returns a Config for an agent on the default gossip port,
// named after the host.
func DefaultConfig() *Config {
	host, _ := os.Hostname()
	return &Config{
		NodeName:    host,
		Role:        RoleAgent,
		BindAddr:    net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultPort)),
		JoinTimeout: 30 * time.Second,
		Logger:      slog.Default(),
	}
}

// ValidateConfig reports every problem with cfg at once, each saying what to
// change.
func ValidateConfig(cfg *Config) error {
	if cfg == nil {
		return errors.New("gossip: config is nil; start from gossip.DefaultConfig()")
	}
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("gossip: "+format, args...))
	}
	if cfg.NodeName == "" {
		bad("NodeName is empty; set it to a name unique in the cluster, such as the host name")
	}
	if cfg.Role != RoleAgent && cfg.Role != RoleCoordinator {
		bad("Role %q is not %q or %q", cfg.Role, RoleAgent, RoleCoordinator)
	}
	if _, _, err := splitIPPort(cfg.BindAddr, true); err != nil {
		bad("BindAddr: %v", err)
	}
	if cfg.AdvertiseAddr != "" {
		if _, _, err := splitIPPort(cfg.AdvertiseAddr, false); err != nil {
			bad("AdvertiseAddr: %v", err)
		}
	}
	if cfg.JoinTimeout < 0 {
		bad("JoinTimeout %v is negative", cfg.JoinTimeout)
	}
	seen := map[string]int{}
	for i, k := range cfg.SecretKeys {
		if err := memberlist.ValidateKey(k); err != nil {
			bad("SecretKeys[%d] is %d bytes; a gossip key must be 16, 24 or 32 bytes", i, len(k))
			continue
		}
		if j, dup := seen[string(k)]; dup {
			bad("SecretKeys[%d] repeats SecretKeys[%d]; list each key once", i, j)
		}
		seen[string(k)] = i
	}
	if len(cfg.Label) > memberlist.LabelMaxSize {
		bad("Label is %d bytes; shorten it to at most %d", len(cfg.Label), memberlist.LabelMaxSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ProbeInterval", cfg.ProbeInterval}, {"GossipInterval", cfg.GossipInterval}, {"PushPullInterval", cfg.PushPullInterval}} {
		if d.v < 0 {
			bad("%s %v is negative; leave it zero for the default", d.name, d.v)
		}
	}
	// Measured with the largest inventory version, so no later bump can push
	// the meta past the limit.
	meta := NodeMeta{Role: cfg.Role, APIAddr: cfg.APIAddr, BlobAddr: cfg.BlobAddr, Labels: cfg.Labels, InventoryVersion: ^uint64(0)}
	if err := meta.validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// splitIPPort parses "IP:port". memberlist binds and advertises IPs, not host
// names; an empty host is allowed for a bind and means every interface.
func splitIPPort(addr string, bind bool) (net.IP, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("%q is not IP:port (%v)", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, 0, fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, portStr)
	}
	if host == "" && bind {
		return net.IPv4zero, port, nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("%q: host %q is not an IP address; gossip needs one (resolve the name first)", addr, host)
	}
	if !bind && (ip.IsUnspecified() || port == 0) {
		return nil, 0, fmt.Errorf("%q: an advertised address needs a concrete IP and a non-zero port", addr)
	}
	return ip, port, nil
}
