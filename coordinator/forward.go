package coordinator

import (
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/proto"
)

// Any node accepts any request. A node that does not lead forwards writes,
// and reads without ?stale, to the leader over HTTP and relays the answer
// verbatim, so a client never needs to know which node leads. The leader's
// HTTP address comes from the replicated state (SetCoordinator, proposed by
// every new leader), so a follower knows it as soon as it knows who leads.

// forwardedHeader marks a forwarded request; a node that receives one and
// does not lead answers 503 instead of forwarding again, so a request never
// circles between nodes that disagree about the leader.
const forwardedHeader = "X-Hearth-Forwarded-By"

// leaderHeader carries the leader's HTTP address on 503 answers.
const leaderHeader = "X-Hearth-Leader"

func newForwardClient(cfg *Config) *fasthttp.Client {
	return &fasthttp.Client{
		Name: "hearth-forward",
		// Long-polls and ?wait submissions hold a forwarded request open.
		ReadTimeout:         cfg.AssignmentWaitMax + maxSubmitWait + 30*time.Second,
		WriteTimeout:        30 * time.Second,
		MaxConnsPerHost:     4096,
		MaxIdleConnDuration: time.Minute,
		MaxConnWaitTimeout:  5 * time.Second,
		// Relay bodies untouched: the leader already chose the encoding.
		DisablePathNormalizing:        true,
		DisableHeaderNamesNormalizing: true,
	}
}

// leaderRoute serves h on the leader and forwards from any other node.
func (s *Server) leaderRoute(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if s.IsLeader() || (ctx.IsGet() && ctx.QueryArgs().Has("stale")) {
			h(ctx)
			return
		}
		s.forward(ctx)
	}
}

func (s *Server) forward(ctx *fasthttp.RequestCtx) {
	if by := ctx.Request.Header.Peek(forwardedHeader); len(by) > 0 {
		s.writeAPIError(ctx, &apiError{Status: http.StatusServiceUnavailable, Code: "not_leader",
			Message: fmt.Sprintf("node %s forwarded this request here, but %s does not lead either; retry shortly", by, s.cfg.NodeID)})
		return
	}
	_, id := s.raft.raft.LeaderWithID()
	if id == "" {
		s.writeAPIError(ctx, &apiError{Status: http.StatusServiceUnavailable, Code: "no_leader",
			Message: fmt.Sprintf("node %s cannot reach a Raft leader (no quorum, or an election is under way); retry shortly or against another node", s.cfg.NodeID)})
		return
	}
	co, ok := s.leaderAddr(string(id))
	if !ok {
		s.writeAPIError(ctx, &apiError{Status: http.StatusServiceUnavailable, Code: "no_leader",
			Message: fmt.Sprintf("leader %s has not published its HTTP address yet; retry shortly", id)})
		return
	}
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	ctx.Request.CopyTo(req)
	req.SetHost(co.HTTPAddr)
	req.URI().SetScheme("http")
	req.Header.Set(forwardedHeader, s.cfg.NodeID)
	start := time.Now()
	if err := s.fwd.Do(req, &ctx.Response); err != nil {
		ctx.Response.Reset()
		s.writeAPIError(ctx, &apiError{Status: http.StatusServiceUnavailable, Code: "leader_unreachable",
			Message: fmt.Sprintf("node %s could not forward to leader %s at %s: %v", s.cfg.NodeID, id, co.HTTPAddr, err)})
		return
	}
	s.metrics.forwarded.Observe(time.Since(start).Seconds())
}

// leaderAddr returns a node's published addresses. A new leader publishes
// its own right after its election, so a follower that does not know them
// yet waits a moment for that entry to arrive.
func (s *Server) leaderAddr(id string) (co *proto.Coordinator, ok bool) {
	s.awaitState(2*time.Second, func() bool {
		co, ok = s.fsm.Coordinator(id)
		return ok && co.HTTPAddr != ""
	})
	return co, ok && co.HTTPAddr != ""
}

// awaitState waits up to d for cond to hold, re-checking it after every
// applied entry, and reports whether it did.
func (s *Server) awaitState(d time.Duration, cond func() bool) bool {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		_, changed := s.fsm.Watch()
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-timeout.C:
			return false
		case <-s.ctx.Done():
			return false
		}
	}
}

// leaderHint is the HTTP address of the last leader this node knew of.
func (s *Server) leaderHint() string {
	id, _ := s.lastLeader.Load().(string)
	if id == "" {
		return ""
	}
	if co, ok := s.fsm.Coordinator(id); ok {
		return co.HTTPAddr
	}
	return ""
}
