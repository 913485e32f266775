package coordinator

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/hearth-gpu/hearth/proto"
)

// ErrNotLeader is returned for a write on a node that is not the leader.
var ErrNotLeader = errors.New("coordinator: this node is not the Raft leader")

// raftNode bundles the Raft instance with the stores it owns, so Close can
// release them in order.
type raftNode struct {
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	transport raft.Transport
	snaps     raft.SnapshotStore
}

// checkDataDir refuses, with a sentence an operator can act on, a data dir
// that cannot be created, is not writable or is nearly full: a clear error
// at start beats a crash loop at the first log write.
func checkDataDir(dir string, minFree uint64) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("coordinator: data dir %s cannot be created: %w", dir, err)
	}
	probe := filepath.Join(dir, ".write-probe")
	f, err := os.OpenFile(probe, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = f.Write([]byte("probe"))
		err = errors.Join(err, f.Sync(), f.Close())
		os.Remove(probe)
	}
	if err != nil {
		return fmt.Errorf("coordinator: data dir %s is not writable: %w", dir, err)
	}
	free, err := freeBytes(dir)
	if err != nil {
		return fmt.Errorf("coordinator: data dir %s: %w", dir, err)
	}
	if free < minFree {
		return fmt.Errorf("coordinator: data dir %s has %d MiB free; the coordinator needs at least %d MiB (min_free_bytes) for its log and snapshots",
			dir, free>>20, minFree>>20)
	}
	return nil
}

func openRaft(cfg *Config, fsm *FSM) (*raftNode, error) {
	if err := checkDataDir(cfg.DataDir, cfg.MinFreeBytes); err != nil {
		return nil, err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.LevelFromString(cmp.Or(cfg.RaftLogLevel, "warn")), Output: os.Stderr})
	if cfg.RaftFastTimeouts {
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}

	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return nil, fmt.Errorf("coordinator: open raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStore(cfg.DataDir, 3, io.Discard)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("coordinator: open snapshot store: %w", err)
	}
	trans := cfg.Transport
	if trans == nil {
		addr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("coordinator: raft_addr %q: %w", cfg.RaftAddr, err)
		}
		tt, err := raft.NewTCPTransport(cfg.RaftAddr, addr, 8, 10*time.Second, io.Discard)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("coordinator: listen for raft on %s: %w", cfg.RaftAddr, err)
		}
		trans = tt
	}
	n := &raftNode{store: store, transport: trans, snaps: snaps}
	var boot []raft.Server
	switch {
	case cfg.Bootstrap:
		boot = []raft.Server{{ID: rc.LocalID, Address: trans.LocalAddr()}}
	case len(cfg.Peers) > 0:
		for _, p := range cfg.Peers {
			boot = append(boot, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
		}
	}
	if boot != nil {
		has, err := n.hasState()
		if err != nil {
			n.closeStores()
			return nil, err
		}
		if !has {
			if err := raft.BootstrapCluster(rc, store, store, snaps, trans, raft.Configuration{Servers: boot}); err != nil {
				n.closeStores()
				return nil, fmt.Errorf("coordinator: bootstrap: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		n.closeStores()
		return nil, fmt.Errorf("coordinator: start raft: %w", err)
	}
	n.raft = r
	return n, nil
}

// hasState reports whether the node's stores already hold a Raft group.
func (n *raftNode) hasState() (bool, error) {
	has, err := raft.HasExistingState(n.store, n.store, n.snaps)
	if err != nil {
		return false, fmt.Errorf("coordinator: inspect raft state: %w", err)
	}
	return has, nil
}

func (n *raftNode) closeStores() error {
	var err error
	if c, ok := n.transport.(io.Closer); ok {
		err = c.Close()
	}
	return errors.Join(err, n.store.Close())
}

func (n *raftNode) close() error {
	err := n.raft.Shutdown().Error()
	return errors.Join(err, n.closeStores())
}

// propose encodes cmd, appends it to the log and waits for it to apply. It
// returns the FSM's result, which is an error when the FSM refused the
// command (the entry is still in the log; every replica refuses it alike).
func (s *Server) propose(cmd proto.Command) (any, error) {
	b, err := proto.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	f := s.raft.raft.Apply(b, 10*time.Second)
	return s.applyResult(f, cmd.CommandType(), start)
}

// applyResult waits for an Apply future and unwraps the FSM's answer.
func (s *Server) applyResult(f raft.ApplyFuture, t proto.CommandType, start time.Time) (any, error) {
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, fmt.Errorf("coordinator: raft apply %v: %w", t, err)
	}
	s.metrics.commitSecs.WithLabelValues(t.String()).Observe(time.Since(start).Seconds())
	if err, ok := f.Response().(error); ok {
		return nil, err
	}
	return f.Response(), nil
}
