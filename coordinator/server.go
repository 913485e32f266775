package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/coordinator/eventbus"
	"github.com/hearth-gpu/hearth/gossip"
	"github.com/hearth-gpu/hearth/proto"
)

// Server is one coordinator node: the Raft FSM, the leader-only scheduler,
// the live host view and the HTTP API. New starts it; Close stops it.
type Server struct {
	cfg     Config
	log     *slog.Logger
	fsm     *FSM
	raft    *raftNode
	hosts   *liveHosts
	metrics *metrics
	sched   *schedLoop
	batch   *batcher
	bus     *eventbus.Bus
	auth    *authenticator
	hooks   *dispatcher
	fwd     *fasthttp.Client // forwards requests to the leader
	gossip  *gossip.Pool     // nil outside a gossip pool

	ln   net.Listener
	http *fasthttp.Server

	// lastLeader is the id of the last leader this node saw (a string).
	lastLeader atomic.Value

	// leaderReady is set once this node leads and has applied every entry
	// of earlier terms (its barrier returned): only then is its state
	// complete enough to read and schedule from.
	leaderReady atomic.Bool
	// leaderSeen is when Healthy last saw a leader (unix ns; 0: never).
	leaderSeen atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New opens the node's Raft state in cfg.DataDir, starts Raft, the
// scheduler (active only while this node leads) and the HTTP API.
func New(cfg Config) (*Server, error) {
	cfg.fillDefaults()
	if err := ValidateConfig(&cfg); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID), fsm: NewFSM()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.metrics = newMetrics(s)
	s.hosts = newLiveHosts(cfg.Now)
	s.sched = newSchedLoop(s)
	s.batch = newBatcher(s)
	s.bus = eventbus.New(eventRingSize)
	s.auth = newAuthenticator(cfg.Tokens)
	s.fwd = newForwardClient(&s.cfg)
	hooks, err := newDispatcher(s)
	if err != nil {
		return nil, err
	}
	s.hooks = hooks
	s.fsm.onApply = s.observe
	s.fsm.onEvents = s.publishEvents

	rn, err := openRaft(&s.cfg, s.fsm)
	if err != nil {
		return nil, err
	}
	s.raft = rn

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		rn.close()
		return nil, fmt.Errorf("coordinator: listen for http on %s: %w", cfg.HTTPAddr, err)
	}
	s.ln = ln
	s.http = s.newHTTPServer()
	s.goBackground(func() {
		if err := s.http.Serve(ln); err != nil {
			s.log.Error("http server stopped", "err", err)
		}
	})
	if err := s.startGossip(); err != nil {
		s.cancel()
		s.http.Shutdown()
		rn.close()
		return nil, err
	}
	s.goBackground(s.runLeadership)
	s.goBackground(s.watchLeader)
	s.goBackground(func() { s.batch.run(s.ctx) })
	if len(cfg.Join) > 0 || cfg.BootstrapExpect > 0 {
		s.goBackground(func() { s.discover(s.ctx) })
	}
	s.log.Info("coordinator started", "http", s.HTTPAddr(), "raft", string(rn.transport.LocalAddr()), "data_dir", cfg.DataDir)
	return s, nil
}

func (s *Server) goBackground(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// observe is the FSM's after-apply hook, called on every node.
func (s *Server) observe(cmd proto.Command, res any, took time.Duration) {
	s.metrics.applySecs.WithLabelValues(cmd.CommandType().String()).Observe(took.Seconds())
	s.sched.observe(cmd, res)
	s.hooks.observe(cmd, res)
}

// HTTPAddr returns the API's bound address (useful with port 0).
func (s *Server) HTTPAddr() string { return s.ln.Addr().String() }

// URL returns the API's base URL.
func (s *Server) URL() string { return "http://" + s.HTTPAddr() }

// FSM exposes the replicated state for in-process readers (tests, demo).
func (s *Server) FSM() *FSM { return s.fsm }

// IsLeader reports whether this node leads the Raft group.
func (s *Server) IsLeader() bool { return s.raft.raft.State() == raft.Leader }

// WaitLeader blocks until this node is the leader and has applied the
// whole log, or ctx ends.
func (s *Server) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !s.IsLeader() || !s.leaderReady.Load() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("coordinator: no leadership: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// Snapshot forces a Raft snapshot now, so the log can be truncated.
func (s *Server) Snapshot() error {
	return s.raft.raft.Snapshot().Error()
}

// runLeadership starts the leader's loops (scheduler, host liveness, job
// timeouts, webhook delivery) when this node becomes leader and stops them
// when leadership is lost.
func (s *Server) runLeadership() {
	var stop func() // non-nil while the leader loops run
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	ch := s.raft.raft.LeaderCh()
	for {
		select {
		case <-s.ctx.Done():
			return
		case isLeader := <-ch:
			s.metrics.setRaftState(isLeader)
			switch {
			case isLeader && stop == nil:
				// A barrier makes sure every entry of the previous term is
				// applied before the leader reads the state.
				if err := s.raft.raft.Barrier(10 * time.Second).Error(); err != nil {
					s.log.Warn("leader barrier failed; not scheduling", "err", err)
					continue
				}
				if err := s.publishSelf(); err != nil {
					s.log.Warn("could not publish this node's address", "err", err)
				}
				s.leaderReady.Store(true)
				s.log.Info("became leader; scheduler running")
				stop = s.startLeaderLoops()
			case !isLeader && stop != nil:
				s.leaderReady.Store(false)
				s.log.Info("lost leadership; scheduler stopped")
				stop()
				stop = nil
			}
		}
	}
}

// startLeaderLoops runs the leader-only loops until the returned stop is
// called.
func (s *Server) startLeaderLoops() (stop func()) {
	ctx, cancel := context.WithCancel(s.ctx)
	since := s.cfg.Now()
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){
		s.sched.run,
		func(ctx context.Context) { s.runSweeper(ctx, since) },
		s.hooks.run,
	} {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	return func() { cancel(); wg.Wait() }
}

// Close stops the API, the scheduler and Raft, in that order, and releases
// the data dir.
func (s *Server) Close() error {
	s.cancel()
	s.bus.Close() // ends event streams, which Shutdown would wait for
	gerr := s.closeGossip()
	err := s.http.Shutdown()
	s.wg.Wait()
	return errors.Join(gerr, err, s.raft.close())
}
