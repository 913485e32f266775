package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/proto"
)

// Forming and changing the Raft group.
//
// Three ways to form a group: Bootstrap (one node, dev), Peers (every node
// is given the same voter list and bootstraps it), or BootstrapExpect with
// Join (each node asks the Join URLs who they are and, once it knows
// BootstrapExpect fresh nodes, bootstraps them all; nodes that compute the
// same set bootstrap the same configuration, which Raft allows). A fresh
// node with Join only, or one that finds an existing leader while
// discovering, asks that group to add it as a voter.

// NodeInfo is the answer of GET /v1/operator/raft/self.
type NodeInfo struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	HasState bool   `json:"has_state"`
	LeaderID string `json:"leader_id,omitempty"`
}

// joinBody is the body of POST /v1/operator/raft/join.
type joinBody struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// removeBody is the body of POST /v1/operator/raft/remove-peer.
type removeBody struct {
	ID string `json:"id"`
}

func (s *Server) selfInfo() NodeInfo {
	_, leader := s.raft.raft.LeaderWithID()
	has, _ := s.raft.hasState()
	return NodeInfo{ID: s.cfg.NodeID, RaftAddr: string(s.raft.transport.LocalAddr()), HTTPAddr: s.HTTPAddr(),
		HasState: has, LeaderID: string(leader)}
}

func (s *Server) handleSelf(*fasthttp.RequestCtx) (int, any, error) {
	return http.StatusOK, s.selfInfo(), nil
}

func (s *Server) handleJoin(ctx *fasthttp.RequestCtx) (int, any, error) {
	var b joinBody
	if err := decodeStrict(ctx.PostBody(), &b); err != nil {
		return 0, nil, err
	}
	if b.ID == "" || b.RaftAddr == "" {
		return 0, nil, errBadRequest("invalid_field", "id", "join needs the node's id and raft_addr")
	}
	if err := s.raft.raft.AddVoter(raft.ServerID(b.ID), raft.ServerAddress(b.RaftAddr), 0, 10*time.Second).Error(); err != nil {
		return 0, nil, leadershipErr(err, "add voter")
	}
	if b.HTTPAddr != "" {
		if _, err := s.propose(&proto.SetCoordinator{Coordinator: proto.Coordinator{ID: b.ID, HTTPAddr: b.HTTPAddr, RaftAddr: b.RaftAddr}}); err != nil {
			return 0, nil, err
		}
	}
	s.log.Info("node joined", "id", b.ID, "raft", b.RaftAddr, "http", b.HTTPAddr)
	return http.StatusOK, s.clusterStatus(), nil
}

func (s *Server) handleRemovePeer(ctx *fasthttp.RequestCtx) (int, any, error) {
	var b removeBody
	if err := decodeStrict(ctx.PostBody(), &b); err != nil {
		return 0, nil, err
	}
	f := s.raft.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return 0, nil, leadershipErr(err, "read configuration")
	}
	if !slices.ContainsFunc(f.Configuration().Servers, func(sv raft.Server) bool { return string(sv.ID) == b.ID }) {
		return 0, nil, &apiError{Status: http.StatusNotFound, Code: "peer_not_found", Field: "id", Message: fmt.Sprintf("no Raft server has id %q", b.ID)}
	}
	if err := s.raft.raft.RemoveServer(raft.ServerID(b.ID), 0, 10*time.Second).Error(); err != nil {
		return 0, nil, leadershipErr(err, "remove server")
	}
	s.log.Info("peer removed", "id", b.ID)
	return http.StatusOK, s.clusterStatus(), nil
}

func leadershipErr(err error, what string) error {
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	}
	return fmt.Errorf("coordinator: %s: %w", what, err)
}

// publishSelf records this node's addresses in the replicated state once it
// leads, so followers can forward to it.
func (s *Server) publishSelf() error {
	me := proto.Coordinator{ID: s.cfg.NodeID, HTTPAddr: s.HTTPAddr(), RaftAddr: string(s.raft.transport.LocalAddr())}
	if co, ok := s.fsm.Coordinator(me.ID); ok && *co == me {
		return nil
	}
	_, err := s.propose(&proto.SetCoordinator{Coordinator: me})
	return err
}

// watchLeader keeps lastLeader current, for the hints in 503 answers.
func (s *Server) watchLeader() {
	ch := make(chan raft.Observation, 8)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	s.raft.raft.RegisterObserver(obs)
	defer s.raft.raft.DeregisterObserver(obs)
	if _, id := s.raft.raft.LeaderWithID(); id != "" {
		s.lastLeader.Store(string(id))
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case o := <-ch:
			if lo, ok := o.Data.(raft.LeaderObservation); ok && lo.LeaderID != "" {
				s.lastLeader.Store(string(lo.LeaderID))
			}
		}
	}
}

// discover forms or joins a group per BootstrapExpect and Join. It returns
// once this node is part of a configuration, or ctx ends.
func (s *Server) discover(ctx context.Context) {
	hc := &fasthttp.Client{ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	warned := time.Now()
	for {
		if s.inConfiguration() {
			return
		}
		if err := s.discoverOnce(hc); err != nil && time.Since(warned) > 10*time.Second {
			s.log.Warn("still forming the Raft group", "err", err)
			warned = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) inConfiguration() bool {
	f := s.raft.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	return slices.ContainsFunc(f.Configuration().Servers, func(sv raft.Server) bool { return string(sv.ID) == s.cfg.NodeID })
}

func (s *Server) discoverOnce(hc *fasthttp.Client) error {
	me := s.selfInfo()
	nodes := map[string]NodeInfo{me.ID: me}
	var errs []error
	var leaderURL string
	for _, u := range s.cfg.Join {
		var info NodeInfo
		if err := s.peerCall(hc, http.MethodGet, u, "/v1/operator/raft/self", nil, &info); err != nil {
			errs = append(errs, err)
			continue
		}
		if info.LeaderID != "" || info.HasState {
			leaderURL = u
		}
		nodes[info.ID] = info
	}
	if leaderURL != "" || s.cfg.BootstrapExpect == 0 {
		// A group exists (or we were told only to join): ask it to add us.
		// Followers forward the join to the leader.
		for _, u := range append([]string{leaderURL}, s.cfg.Join...) {
			if u == "" {
				continue
			}
			err := s.peerCall(hc, http.MethodPost, u, "/v1/operator/raft/join", joinBody{ID: me.ID, RaftAddr: me.RaftAddr, HTTPAddr: me.HTTPAddr}, nil)
			if err == nil {
				s.log.Info("joined the Raft group", "via", u)
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	if len(nodes) < s.cfg.BootstrapExpect {
		return fmt.Errorf("know %d of %d expected nodes: %w", len(nodes), s.cfg.BootstrapExpect, errors.Join(errs...))
	}
	var conf raft.Configuration
	for _, n := range nodes {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(n.ID), Address: raft.ServerAddress(n.RaftAddr)})
	}
	slices.SortFunc(conf.Servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
	if err := s.raft.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap: %w", err)
	}
	s.log.Info("bootstrapped the Raft group", "voters", len(conf.Servers))
	return nil
}

// peerCall makes one JSON call to another coordinator with the cluster token.
func (s *Server) peerCall(hc *fasthttp.Client, method, base, path string, body, out any) error {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(strings.TrimSuffix(base, "/") + path)
	req.Header.SetMethod(method)
	if s.cfg.ClusterToken != "" {
		req.Header.Set("Authorization", "Bearer "+s.cfg.ClusterToken)
	}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		req.Header.SetContentType("application/json")
		req.SetBody(b)
	}
	if err := hc.Do(req, resp); err != nil {
		return fmt.Errorf("%s %s%s: %w", method, base, path, err)
	}
	if resp.StatusCode() >= 300 {
		return fmt.Errorf("%s %s%s: %d %s", method, base, path, resp.StatusCode(), strings.TrimSpace(string(resp.Body())))
	}
	if out != nil {
		return json.Unmarshal(resp.Body(), out)
	}
	return nil
}
