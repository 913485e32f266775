package coordinator

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/proto"
)

// Draining. An operator drains a host before maintenance
// (POST /v1/hosts/{id}/drain): the scheduler places nothing new there, the
// jobs already placed run to their end, and the host lists as draining
// until none is left, then as drained. The mark is in the host's replicated
// record (a DrainHost command, kept in snapshots), so it holds across
// leader changes and across the agent's restarts and re-registrations
// until {"drain": false} clears it, as a node's eligibility does in Nomad.
//
// An agent that is shutting down drains itself too, but only through its
// heartbeats (Heartbeat.Draining): that lasts as long as the process, and
// it deregisters (POST /v1/agent/deregister) when its jobs are done.

func (f *FSM) applyDrain(index uint64, c *proto.DrainHost) any {
	old, ok := f.hosts[c.HostID]
	if !ok {
		return fmt.Errorf("%w: %s", ErrHostNotFound, c.HostID)
	}
	h := *old
	h.Index = index
	switch {
	case !c.Drain:
		h.Drain, h.DrainSince = false, nil
	case !old.Drain:
		t := c.Time
		h.Drain, h.DrainSince = true, &t
	}
	f.storeHost(&h)
	return &h
}

// ActiveJobsByHost counts, per host, the jobs placed there and not yet
// finished.
func (f *FSM) ActiveJobsByHost() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]int)
	for _, j := range f.live {
		if j.Placement != nil {
			out[j.Placement.Host]++
		}
	}
	return out
}

func errUnknownHost(id string) error {
	return &apiError{Status: http.StatusNotFound, Code: "host_not_found", Field: "id",
		Message: fmt.Sprintf("host %q is not registered; 'hearth host ls' lists the hosts", id)}
}

// viewHost returns the API's view of one registration.
func (s *Server) viewHost(h *proto.Host) proto.HostView {
	v := s.hostView(h, s.fsm.ActiveJobsByHost()[h.ID])
	v.Gossip = s.gossipStates()[h.ID]
	return v
}

func (s *Server) handleGetHost(ctx *fasthttp.RequestCtx) (int, any, error) {
	id, _ := ctx.UserValue("id").(string)
	h, ok := s.fsm.Host(id)
	if !ok {
		return 0, nil, errUnknownHost(id)
	}
	return http.StatusOK, s.viewHost(h), nil
}

func (s *Server) handleDrain(ctx *fasthttp.RequestCtx) (int, any, error) {
	id, _ := ctx.UserValue("id").(string)
	var b proto.DrainRequest
	if len(ctx.PostBody()) > 0 {
		if err := decodeStrict(ctx.PostBody(), &b); err != nil {
			return 0, nil, err
		}
	}
	drain := b.Drain == nil || *b.Drain
	if _, ok := s.fsm.Host(id); !ok {
		return 0, nil, errUnknownHost(id)
	}
	res, err := s.propose(&proto.DrainHost{HostID: id, Drain: drain, Time: s.cfg.Now().UTC()})
	if errors.Is(err, ErrHostNotFound) {
		return 0, nil, errUnknownHost(id)
	}
	if err != nil {
		return 0, nil, err
	}
	h := res.(*proto.Host)
	if drain {
		s.log.Info("host draining", "host", id, "since", h.DrainSince)
	} else {
		s.log.Info("host drain cleared: taking placements", "host", id)
	}
	return http.StatusOK, s.viewHost(h), nil
}

// handleDeregister marks an agent's host down at once, on the agent's own
// word that it is leaving: whatever it still had is requeued now, not
// after the heartbeat grace. A host that was already down stays as it is.
func (s *Server) handleDeregister(ctx *fasthttp.RequestCtx) (int, any, error) {
	var d proto.Deregistration
	if err := decodeStrict(ctx.PostBody(), &d); err != nil {
		return 0, nil, err
	}
	if err := checkProto(d.Proto); err != nil {
		return 0, nil, err
	}
	if len(d.Reason) > 1024 {
		return 0, nil, errBadRequest("invalid_field", "reason", "reason must be at most 1024 bytes")
	}
	h, ok := s.fsm.Host(d.HostID)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %q", ErrHostNotFound, d.HostID)
	}
	if h.DownAt == nil {
		reason := "left: the agent shut down"
		if d.Reason != "" {
			reason = "left: " + d.Reason
		}
		if err := s.markHostDown(h.ID, reason); err != nil {
			return 0, nil, err
		}
	}
	h, _ = s.fsm.Host(d.HostID)
	return http.StatusOK, s.viewHost(h), nil
}
