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
	transport *raft.NetworkTransport
}

func openRaft(cfg *Config, fsm *FSM) (*raftNode, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("coordinator: create data dir: %w", err)
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
	addr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("coordinator: raft_addr %q: %w", cfg.RaftAddr, err)
	}
	trans, err := raft.NewTCPTransport(cfg.RaftAddr, addr, 3, 10*time.Second, io.Discard)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("coordinator: listen for raft on %s: %w", cfg.RaftAddr, err)
	}
	if cfg.Bootstrap {
		has, err := raft.HasExistingState(store, store, snaps)
		if err != nil {
			trans.Close()
			store.Close()
			return nil, fmt.Errorf("coordinator: inspect raft state: %w", err)
		}
		if !has {
			conf := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: trans.LocalAddr()}}}
			if err := raft.BootstrapCluster(rc, store, store, snaps, trans, conf); err != nil {
				trans.Close()
				store.Close()
				return nil, fmt.Errorf("coordinator: bootstrap: %w", err)
			}
		}
	}
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		trans.Close()
		store.Close()
		return nil, fmt.Errorf("coordinator: start raft: %w", err)
	}
	return &raftNode{raft: r, store: store, transport: trans}, nil
}

func (n *raftNode) close() error {
	err := n.raft.Shutdown().Error()
	n.transport.Close()
	return errors.Join(err, n.store.Close())
}

// propose encodes cmd, appends it to the log and waits for it to apply. It
// returns the FSM's result, which is an error when the FSM refused the
// command (the entry is still in the log; every replica refuses it alike).
func (s *Server) propose(cmd proto.Command) (any, error) {
	b, err := proto.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	f := s.raft.raft.Apply(b, 10*time.Second)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return nil, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return nil, fmt.Errorf("coordinator: raft apply %v: %w", cmd.CommandType(), err)
	}
	if err, ok := f.Response().(error); ok {
		return nil, err
	}
	return f.Response(), nil
}
