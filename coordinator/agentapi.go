package coordinator

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/proto"
)

// The agent-facing routes: register, heartbeat, long-poll for assignments,
// report transitions.

func checkProto(v int) error {
	if v != proto.Version {
		return errBadRequest("unsupported_protocol", "proto", "agent speaks protocol %d, this coordinator speaks %d; upgrade the older side", v, proto.Version)
	}
	return nil
}

func (s *Server) handleRegister(ctx *fasthttp.RequestCtx) (int, any, error) {
	var reg proto.Registration
	if err := decodeStrict(ctx.PostBody(), &reg); err != nil {
		return 0, nil, err
	}
	if err := checkProto(reg.Proto); err != nil {
		return 0, nil, err
	}
	h := reg.Host
	if err := proto.ValidateModelName(h.ID); err != nil || len(h.ID) > 128 {
		return 0, nil, errBadRequest("invalid_field", "host.id", "host id %q must be a short name without '..' or leading '/'", h.ID)
	}
	h.RegisteredAt = s.cfg.Now().UTC()
	res, err := s.propose(&proto.RegisterHost{Host: h})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, res, nil
}

func (s *Server) handleHeartbeat(ctx *fasthttp.RequestCtx) (int, any, error) {
	var b proto.Heartbeat
	if err := decodeStrict(ctx.PostBody(), &b); err != nil {
		return 0, nil, err
	}
	if err := checkProto(b.Proto); err != nil {
		return 0, nil, err
	}
	if fe := b.Validate(); fe != nil {
		return 0, nil, fe
	}
	h, ok := s.fsm.Host(b.HostID)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %q", ErrHostNotFound, b.HostID)
	}
	_, ack := s.hosts.apply(&b) // and the fleet follows it (schedLoop.followBeat)
	if h.DownAt != nil {
		// The host is back. Registering it again brings it up; the jobs it
		// lost were requeued with new epochs, so whatever it still runs
		// from before is refused as stale and withdrawn by its reconcile.
		up := *h
		up.RegisteredAt = s.cfg.Now().UTC()
		if _, err := s.propose(&proto.RegisterHost{Host: up}); err != nil {
			return 0, nil, err
		}
		s.log.Info("host back up", "host", h.ID, "was_down_since", h.DownAt)
	}
	ack.Index = s.fsm.Index()
	return http.StatusOK, ack, nil
}

// handleAssignments answers with the host's live assignments once the FSM
// has moved past ?index=, or after ?wait= (default 30 s, capped) with what
// there is. The agent reconciles against the full list each time, so a lost
// answer costs nothing.
func (s *Server) handleAssignments(ctx *fasthttp.RequestCtx) (int, any, error) {
	args := ctx.QueryArgs()
	host := string(args.Peek("host"))
	if _, ok := s.fsm.Host(host); !ok {
		return 0, nil, fmt.Errorf("%w: %q", ErrHostNotFound, host)
	}
	var after uint64
	if v := args.Peek("index"); len(v) > 0 {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0, nil, errBadRequest("invalid_query", "index", "index %q must be an unsigned integer", v)
		}
		after = n
	}
	wait := 30 * time.Second
	if v := args.Peek("wait"); len(v) > 0 {
		d, err := time.ParseDuration(string(v))
		if err != nil || d < 0 {
			return 0, nil, errBadRequest("invalid_query", "wait", "wait %q must be a duration like 30s", v)
		}
		wait = min(d, s.cfg.AssignmentWaitMax)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		// The host's own index: other hosts' entries do not wake it. An
		// index past this node's log (from another cluster) answers at once.
		idx, changed := s.fsm.WatchHost(host)
		if idx > after || after > s.fsm.Index() {
			return http.StatusOK, proto.Assignments{Index: idx, Assignments: s.fsm.Assignments(host)}, nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return http.StatusOK, proto.Assignments{Index: idx, Assignments: s.fsm.Assignments(host)}, nil
		case <-s.ctx.Done():
			return 0, nil, &apiError{Status: http.StatusServiceUnavailable, Code: "shutting_down", Message: "coordinator is shutting down"}
		}
	}
}

func (s *Server) handleReport(ctx *fasthttp.RequestCtx) (int, any, error) {
	var r proto.JobReport
	if err := decodeStrict(ctx.PostBody(), &r); err != nil {
		return 0, nil, err
	}
	if !r.State.AgentReportable() {
		return 0, nil, errBadRequest("invalid_field", "state", "an agent cannot report state %q", r.State)
	}
	r.Time = s.cfg.Now().UTC() // the leader's clock orders timings, not the agent's
	res, err := s.propose(&proto.ReportJob{Report: r, Backoff: s.cfg.RequeueBackoff, BackoffMax: s.cfg.RequeueBackoffMax})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, res, nil
}
