package coordinator

import (
	"fmt"
	"strings"
	"time"

	"github.com/hearth-gpu/hearth/gossip"
)

// coordinatorMemberPrefix names coordinators in the gossip pool, where
// agents go by their host id.
const coordinatorMemberPrefix = "coordinator:"

// startGossip joins the pool of agents and coordinators when the config
// asks for it. The leader uses membership as a second, faster failure
// detector: an agent that gossip declares dead, or that leaves, is marked
// down at once rather than after the heartbeat grace.
func (s *Server) startGossip() error {
	if s.cfg.Gossip == nil || s.cfg.Gossip.BindAddr == "" {
		return nil
	}
	gc := *s.cfg.Gossip
	gc.NodeName, gc.Role = coordinatorMemberPrefix+s.cfg.NodeID, gossip.RoleCoordinator
	gc.APIAddr, gc.BlobAddr = s.HTTPAddr(), ""
	gc.Logger = s.log
	gc.Events = s.gossipEvent
	seeds := gc.Join
	gc.Join = nil
	pool, err := gossip.New(&gc)
	if err != nil {
		return fmt.Errorf("coordinator: gossip: %w", err)
	}
	s.gossip = pool
	if len(seeds) > 0 {
		s.goBackground(func() {
			if _, err := pool.Join(s.ctx, seeds); err != nil && s.ctx.Err() == nil {
				s.log.Error("not in the gossip pool: hosts are judged by heartbeats alone", "err", err)
			}
		})
	}
	return nil
}

func (s *Server) gossipEvent(ev gossip.Event) {
	if ev.Member.Role != gossip.RoleAgent || (ev.Type != gossip.EventDead && ev.Type != gossip.EventLeave) {
		return
	}
	if !s.leaderReady.Load() {
		return // the leader acts; a new leader's heartbeat grace covers the rest
	}
	h, ok := s.fsm.Host(ev.Member.Name)
	if !ok || h.DownAt != nil {
		return
	}
	reason := "gossip declared the host dead"
	if ev.Type == gossip.EventLeave {
		reason = "the host left the gossip pool"
	}
	s.goBackground(func() {
		if err := s.markHostDown(h.ID, reason); err != nil {
			s.log.Warn("cannot mark a host down that gossip lost", "host", h.ID, "err", err)
		}
	})
}

// gossipStates maps each agent member's name to its state in this node's
// pool, for the hosts listing; nil outside a pool.
func (s *Server) gossipStates() map[string]string {
	if s.gossip == nil {
		return nil
	}
	out := map[string]string{}
	for _, m := range s.gossip.Members() {
		if !strings.HasPrefix(m.Name, coordinatorMemberPrefix) {
			out[m.Name] = m.State.String()
		}
	}
	return out
}

func (s *Server) closeGossip() error {
	if s.gossip == nil {
		return nil
	}
	if err := s.gossip.Leave(2 * time.Second); err != nil {
		s.log.Debug("gossip leave", "err", err)
	}
	return s.gossip.Close()
}

// GossipAddr is the address members join this node's pool at, or ""
// outside a pool.
func (s *Server) GossipAddr() string {
	if s.gossip == nil {
		return ""
	}
	return s.gossip.LocalNode().Addr
}
