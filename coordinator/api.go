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
			if ae.Status >= 500 && ae.Code != "shutting_down" {
				s.log.Warn("request failed", "method", string(ctx.Method()), "path", string(ctx.Path()), "err", err)
			}
			writeError(ctx, ae)
			return
		}
		writeJSON(ctx, status, v)
	}
}

func (s *Server) newHTTPServer() *fasthttp.Server {
	r := router.New()
	r.POST("/v1/jobs", s.wrap(s.handleSubmit))
	r.GET("/v1/jobs", s.wrap(s.handleListJobs))
	r.GET("/v1/jobs/{id}", s.wrap(s.handleGetJob))
	r.GET("/v1/hosts", s.wrap(s.handleListHosts))
	r.GET("/v1/models", s.wrap(s.handleListModels))
	r.GET("/v1/models/{name:*}", s.wrap(s.handleGetModel))
	r.PUT("/v1/models/{name:*}", s.wrap(s.handlePutModel))
	r.GET("/v1/cluster", s.wrap(s.handleCluster))
	r.POST("/v1/agent/register", s.wrap(s.handleRegister))
	r.POST("/v1/agent/heartbeat", s.wrap(s.handleHeartbeat))
	r.GET("/v1/agent/assignments", s.wrap(s.handleAssignments))
	r.POST("/v1/agent/report", s.wrap(s.handleReport))
	r.GET("/healthz", s.wrap(func(*fasthttp.RequestCtx) (int, any, error) {
		return http.StatusOK, map[string]string{"status": "ok"}, nil
	}))
	r.GET("/readyz", s.wrap(s.handleReady))
	r.GET("/metrics", fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})))
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
	out := make([]proto.HostView, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, s.hostView(h))
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
	Jobs         map[proto.JobState]int `json:"jobs"`
}

// ClusterMember names one Raft server.
type ClusterMember struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

func (s *Server) handleCluster(*fasthttp.RequestCtx) (int, any, error) {
	r := s.raft.raft
	addr, id := r.LeaderWithID()
	st := ClusterStatus{
		NodeID: s.cfg.NodeID, State: r.State().String(),
		Leader:    ClusterMember{ID: string(id), Address: string(addr)},
		LastIndex: r.LastIndex(), AppliedIndex: r.AppliedIndex(), Jobs: s.fsm.Counts(),
		Voters: []ClusterMember{},
	}
	st.CommitIndex, _ = strconv.ParseUint(r.Stats()["commit_index"], 10, 64)
	if f := r.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			st.Voters = append(st.Voters, ClusterMember{ID: string(srv.ID), Address: string(srv.Address)})
		}
	}
	return http.StatusOK, st, nil
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
