package coordinator

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fasthttp/router"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/hearth-gpu/hearth/proto"
)

// handlerFunc is an API handler: it returns a status and a value to encode
// as JSON, or an error that errors.go maps to a status and code.
type handlerFunc func(ctx *fasthttp.RequestCtx) (int, any, error)

func (s *Server) wrap(h handlerFunc) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		status, v, err := h(ctx)
		if err != nil {
			ae := toAPIError(err)
			if ae.Status >= 500 && ae.Code != "shutting_down" && !leadershipCodes[ae.Code] {
				s.log.Warn("request failed", "method", string(ctx.Method()), "path", string(ctx.Path()), "err", err)
			}
			s.writeAPIError(ctx, ae)
			return
		}
		writeJSON(ctx, status, v)
	}
}

// authed checks the bearer token's scope before h runs.
func (s *Server) authed(scope Scope, h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if err := s.auth.check(ctx, scope); err != nil {
			writeError(ctx, err)
			return
		}
		h(ctx)
	}
}

// Where a route is served: on the leader (forwarded from other nodes) or on
// whichever node got it.
const (
	onLeader  = true
	onAnyNode = false
)

func (s *Server) newHTTPServer() *fasthttp.Server {
	r := router.New()
	route := func(method, path string, scope Scope, leader bool, h fasthttp.RequestHandler) {
		if leader {
			h = s.leaderRoute(h)
		}
		r.Handle(method, path, s.authed(scope, h))
	}
	api := func(method, path string, scope Scope, leader bool, h handlerFunc) {
		route(method, path, scope, leader, s.wrap(h))
	}
	api("POST", "/v1/jobs", ScopeSubmit, onLeader, s.handleSubmit)
	api("GET", "/v1/jobs", ScopeRead, onLeader, s.handleListJobs)
	api("GET", "/v1/jobs/{id}", ScopeRead, onLeader, s.handleGetJob)
	api("POST", "/v1/jobs/{id}/cancel", ScopeSubmit, onLeader, s.handleCancel)
	api("POST", "/v1/jobs/{id}/retry", ScopeSubmit, onLeader, s.handleRetry)
	// Every node applies the same log and so emits the same events: streams
	// are served where they are asked for.
	route("GET", "/v1/jobs/{id}/events", ScopeRead, onAnyNode, s.handleJobEvents)
	route("GET", "/v1/events", ScopeRead, onAnyNode, s.handleAllEvents)
	api("GET", "/v1/hosts", ScopeRead, onLeader, s.handleListHosts)
	api("GET", "/v1/hosts/{id}", ScopeRead, onLeader, s.handleGetHost)
	api("POST", "/v1/hosts/{id}/drain", ScopeAdmin, onLeader, s.handleDrain)
	api("GET", "/v1/models", ScopeRead, onLeader, s.handleListModels)
	api("GET", "/v1/models/{name:*}", ScopeRead, onLeader, s.handleGetModel)
	api("PUT", "/v1/models/{name:*}", ScopeAdmin, onLeader, s.handlePutModel)
	api("GET", "/v1/cluster", ScopeRead, onAnyNode, s.handleCluster)
	api("GET", "/v1/operator/raft/peers", ScopeRead, onAnyNode, s.handleCluster)
	api("GET", "/v1/operator/raft/self", ScopeAdmin, onAnyNode, s.handleSelf)
	api("POST", "/v1/operator/raft/join", ScopeAdmin, onLeader, s.handleJoin)
	api("POST", "/v1/operator/raft/remove-peer", ScopeAdmin, onLeader, s.handleRemovePeer)
	api("POST", "/v1/agent/register", ScopeAgent, onLeader, s.handleRegister)
	api("POST", "/v1/agent/heartbeat", ScopeAgent, onLeader, s.handleHeartbeat)
	api("GET", "/v1/agent/assignments", ScopeAgent, onLeader, s.handleAssignments)
	api("POST", "/v1/agent/report", ScopeAgent, onLeader, s.handleReport)
	api("POST", "/v1/agent/deregister", ScopeAgent, onLeader, s.handleDeregister)
	healthScope, metricsScope := scopeNone, scopeNone
	if !s.cfg.OpenHealth {
		healthScope = ScopeRead
	}
	if !s.cfg.OpenMetrics {
		metricsScope = ScopeRead
	}
	api("GET", "/healthz", healthScope, onAnyNode, func(*fasthttp.RequestCtx) (int, any, error) {
		return http.StatusOK, map[string]string{"status": "ok"}, nil
	})
	api("GET", "/readyz", healthScope, onAnyNode, s.handleReady)
	route("GET", "/metrics", metricsScope, onAnyNode, fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})))
	r.NotFound = s.wrap(func(ctx *fasthttp.RequestCtx) (int, any, error) {
		return 0, nil, &apiError{Status: http.StatusNotFound, Code: "not_found", Message: fmt.Sprintf("no route for %s %s", ctx.Method(), ctx.Path())}
	})
	r.MethodNotAllowed = s.wrap(func(ctx *fasthttp.RequestCtx) (int, any, error) {
		return 0, nil, &apiError{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: fmt.Sprintf("%s is not allowed on %s", ctx.Method(), ctx.Path())}
	})
	return &fasthttp.Server{
		Handler: r.Handler,
		Name:    "hearth",
		// fasthttp logs connection-level errors (an oversized body, a client
		// that hung up) itself; the client already got a JSON answer, so
		// these are debug detail, not warnings.
		Logger:             fasthttpLogger{s.log},
		MaxRequestBodySize: s.cfg.MaxBodyBytes,
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        2 * time.Minute,
		// fasthttp answers oversized or unparsable requests itself; keep
		// even those in the API's JSON error shape.
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if _, ok := err.(*fasthttp.ErrSmallBuffer); ok || strings.Contains(err.Error(), "body size exceeds") {
				writeError(ctx, &apiError{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large",
					Message: fmt.Sprintf("request body is larger than the %d-byte limit", s.cfg.MaxBodyBytes)})
				return
			}
			writeError(ctx, errBadRequest("bad_request", "", "cannot parse request: %v", err))
		},
	}
}

func (s *Server) handleGetJob(ctx *fasthttp.RequestCtx) (int, any, error) {
	id, _ := ctx.UserValue("id").(string)
	j, ok := s.fsm.Job(id)
	if !ok {
		return 0, nil, fmt.Errorf("%w: %q", ErrJobNotFound, id)
	}
	return http.StatusOK, j, nil
}

// JobList is the answer of GET /v1/jobs; Next is the cursor for ?after=.
type JobList struct {
	Jobs []*proto.Job `json:"jobs"`
	Next string       `json:"next,omitempty"`
}

func (s *Server) handleListJobs(ctx *fasthttp.RequestCtx) (int, any, error) {
	args := ctx.QueryArgs()
	q := JobFilter{
		State: proto.JobState(args.Peek("state")),
		Host:  string(args.Peek("host")),
		Model: string(args.Peek("model")),
		After: string(args.Peek("after")),
		Limit: 100,
	}
	if q.State != "" && !q.State.Valid() {
		return 0, nil, errBadRequest("invalid_query", "state", "unknown state %q", q.State)
	}
	if l := args.Peek("limit"); len(l) > 0 {
		n, err := strconv.Atoi(string(l))
		if err != nil || n < 1 || n > 1000 {
			return 0, nil, errBadRequest("invalid_query", "limit", "limit %q must be an integer from 1 to 1000", l)
		}
		q.Limit = n
	}
	want := q.Limit
	q.Limit++ // one more tells whether a next page exists
	jobs := s.fsm.Jobs(q)
	out := JobList{Jobs: jobs}
	if len(jobs) > want {
		out.Jobs = jobs[:want]
		out.Next = jobs[want-1].ID
	}
	return http.StatusOK, out, nil
}

func (s *Server) handleListHosts(*fasthttp.RequestCtx) (int, any, error) {
	hosts := s.fsm.Hosts()
	states := s.gossipStates()
	active := s.fsm.ActiveJobsByHost()
	out := make([]proto.HostView, 0, len(hosts))
	for _, h := range hosts {
		v := s.hostView(h, active[h.ID])
		v.Gossip = states[h.ID]
		out = append(out, v)
	}
	return http.StatusOK, map[string]any{"hosts": out}, nil
}

func (s *Server) handleListModels(*fasthttp.RequestCtx) (int, any, error) {
	return http.StatusOK, map[string]any{"models": s.fsm.Models()}, nil
}

// modelName returns the {name} path parameter, percent-decoded: the router
// matches the raw path, so "loras/pixel%20art.safetensors" must become the
// catalog name "loras/pixel art.safetensors" (and "%2E%2E" a ".." that
// validation refuses).
func modelName(ctx *fasthttp.RequestCtx) (string, error) {
	raw, _ := ctx.UserValue("name").(string)
	name, err := url.PathUnescape(raw)
	if err != nil {
		return "", errBadRequest("invalid_field", "name", "model name %q is not a valid escaped path: %v", raw, err)
	}
	return name, nil
}

func (s *Server) handleGetModel(ctx *fasthttp.RequestCtx) (int, any, error) {
	name, err := modelName(ctx)
	if err != nil {
		return 0, nil, err
	}
	m, ok := s.fsm.Model(name)
	if !ok {
		return 0, nil, &apiError{Status: http.StatusNotFound, Code: "model_not_found", Field: "name", Message: fmt.Sprintf("model %q is not in the catalog", name)}
	}
	return http.StatusOK, m, nil
}

// modelBody is the body of PUT /v1/models/{name}.
type modelBody struct {
	Digest proto.Digest `json:"digest"`
	Size   int64        `json:"size"`
	Origin string       `json:"origin,omitempty"`
}

func (s *Server) handlePutModel(ctx *fasthttp.RequestCtx) (int, any, error) {
	name, err := modelName(ctx)
	if err != nil {
		return 0, nil, err
	}
	var b modelBody
	if err := decodeStrict(ctx.PostBody(), &b); err != nil {
		return 0, nil, err
	}
	now := s.cfg.Now().UTC()
	m := proto.Model{Name: name, Digest: b.Digest, Size: b.Size, Origin: b.Origin, CreatedAt: now, UpdatedAt: now}
	if fe := m.Validate(); fe != nil {
		return 0, nil, fe
	}
	res, err := s.propose(&proto.PutModel{Model: m})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, res, nil
}

// ClusterStatus is the answer of GET /v1/cluster.
type ClusterStatus struct {
	NodeID       string                 `json:"node_id"`
	State        string                 `json:"state"`
	Leader       ClusterMember          `json:"leader"`
	Voters       []ClusterMember        `json:"voters"`
	LastIndex    uint64                 `json:"last_index"`
	CommitIndex  uint64                 `json:"commit_index"`
	AppliedIndex uint64                 `json:"applied_index"`
	Term         uint64                 `json:"term"`
	Jobs         map[proto.JobState]int `json:"jobs"`
}

// ClusterMember names one Raft server.
type ClusterMember struct {
	ID       string `json:"id"`
	Address  string `json:"address"` // Raft
	HTTPAddr string `json:"http_addr,omitempty"`
	Suffrage string `json:"suffrage,omitempty"`
}

func (s *Server) handleCluster(*fasthttp.RequestCtx) (int, any, error) {
	return http.StatusOK, s.clusterStatus(), nil
}

func (s *Server) clusterStatus() ClusterStatus {
	r := s.raft.raft
	addr, id := r.LeaderWithID()
	st := ClusterStatus{
		NodeID: s.cfg.NodeID, State: r.State().String(),
		Leader:    ClusterMember{ID: string(id), Address: string(addr)},
		LastIndex: r.LastIndex(), AppliedIndex: r.AppliedIndex(), Jobs: s.fsm.Counts(),
		Voters: []ClusterMember{}, Term: r.CurrentTerm(),
	}
	st.CommitIndex, _ = strconv.ParseUint(r.Stats()["commit_index"], 10, 64)
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			m := ClusterMember{ID: string(srv.ID), Address: string(srv.Address), Suffrage: srv.Suffrage.String()}
			if co, ok := s.fsm.Coordinator(m.ID); ok {
				m.HTTPAddr = co.HTTPAddr
			}
			st.Voters = append(st.Voters, m)
		}
	}
	if co, ok := s.fsm.Coordinator(st.Leader.ID); ok {
		st.Leader.HTTPAddr = co.HTTPAddr
	}
	return st
}

func (s *Server) handleReady(*fasthttp.RequestCtx) (int, any, error) {
	if addr, _ := s.raft.raft.LeaderWithID(); addr == "" {
		return 0, nil, &apiError{Status: http.StatusServiceUnavailable, Code: "no_leader", Message: "the Raft group has no leader yet"}
	}
	if s.IsLeader() && !s.leaderReady.Load() {
		return 0, nil, &apiError{Status: http.StatusServiceUnavailable, Code: "catching_up", Message: "this node leads but has not applied the log of earlier terms yet"}
	}
	return http.StatusOK, map[string]string{"status": "ready"}, nil
}

// jobIDs keeps newJobID monotonic within the process.
var jobIDs struct {
	sync.Mutex
	ms  int64  // timestamp of the last id
	seq uint64 // its 48-bit suffix
}

// newJobID returns a 24-character id whose first 12 hex digits are the
// submit time in milliseconds, so ids sort by submission. Ids minted in the
// same millisecond as the last one (or while the clock steps back) keep its
// timestamp and count up from its suffix, ULID-style, so they sort in
// submit order too, and a listing cursor does not skip a job this leader
// accepts later.
func newJobID(now time.Time) string {
	ms := now.UnixMilli()
	jobIDs.Lock()
	defer jobIDs.Unlock()
	if ms <= jobIDs.ms {
		ms = jobIDs.ms
		jobIDs.seq++
	} else {
		var r [8]byte
		if _, err := io.ReadFull(rand.Reader, r[2:]); err != nil {
			panic("coordinator: crypto/rand failed: " + err.Error())
		}
		r[2] &= 0x7f // leave room to count up without overflowing 48 bits
		jobIDs.ms, jobIDs.seq = ms, binary.BigEndian.Uint64(r[:])
	}
	return fmt.Sprintf("%012x%012x", ms, jobIDs.seq)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// unknownFieldName extracts the name from encoding/json's
// `json: unknown field "x"` error.
func unknownFieldName(err error) (string, bool) {
	const p = `json: unknown field "`
	msg := err.Error()
	i := strings.Index(msg, p)
	if i < 0 {
		return "", false
	}
	return strings.TrimSuffix(msg[i+len(p):], `"`), true
}

// fasthttpLogger adapts slog to fasthttp's Printf-style logger.
type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.log.Debug("http: " + fmt.Sprintf(format, args...))
}

// cancelBody is the optional body of POST /v1/jobs/{id}/cancel.
type cancelBody struct {
	Reason string `json:"reason,omitempty"`
}

func (s *Server) handleCancel(ctx *fasthttp.RequestCtx) (int, any, error) {
	id, _ := ctx.UserValue("id").(string)
	var b cancelBody
	if len(ctx.PostBody()) > 0 {
		if err := decodeStrict(ctx.PostBody(), &b); err != nil {
			return 0, nil, err
		}
	}
	if len(b.Reason) > 1024 {
		return 0, nil, errBadRequest("invalid_field", "reason", "reason must be at most 1024 bytes")
	}
	reason := "cancelled by request"
	if b.Reason != "" {
		reason = "cancelled: " + b.Reason
	}
	res, err := s.propose(&proto.CancelJob{JobID: id, Reason: reason, Time: s.cfg.Now().UTC()})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, res, nil
}

func (s *Server) handleRetry(ctx *fasthttp.RequestCtx) (int, any, error) {
	id, _ := ctx.UserValue("id").(string)
	res, err := s.propose(&proto.RetryJob{JobID: id, Time: s.cfg.Now().UTC()})
	if err != nil {
		return 0, nil, err
	}
	ctx.Response.Header.Set("Location", "/v1/jobs/"+id)
	return http.StatusAccepted, res, nil
}
