// Package client is the Go client of the coordinator's HTTP API, used by the
// agent, the CLI and the tests. Like proto it imports only the standard
// library (and proto), so the agent talks to the coordinator without
// importing any of its code.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Client talks to a coordinator cluster's API. Any node serves any request
// (followers forward to the leader), so the client sticks to one node and
// moves to the next only when that node cannot be reached.
type Client struct {
	bases []string
	cur   atomic.Int64 // index into bases of the node in use
	token string
	http  *http.Client
}

// New returns a client for the API at base (e.g. "http://127.0.0.1:7700"),
// or at several nodes given as a comma-separated list. A nil hc uses a
// client without an overall timeout, since long-polls and ?wait calls run
// long; pass contexts to bound calls.
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}}
	}
	c := &Client{http: hc}
	for _, b := range strings.Split(base, ",") {
		if b = strings.TrimSuffix(strings.TrimSpace(b), "/"); b != "" {
			c.bases = append(c.bases, b)
		}
	}
	if len(c.bases) == 0 {
		c.bases = []string{""}
	}
	return c
}

// WithToken sets the bearer token sent with every request and returns c.
func (c *Client) WithToken(token string) *Client {
	c.token = token
	return c
}

// Base returns the base URL of the node in use.
func (c *Client) Base() string { return c.bases[int(c.cur.Load())%len(c.bases)] }

// failover moves to the next node after a transport error on from. The
// failed call is not retried here: only the caller knows whether it is
// safe to repeat (a submit is, with an Idempotency-Key).
func (c *Client) failover(from int64) {
	if len(c.bases) > 1 {
		c.cur.CompareAndSwap(from, (from+1)%int64(len(c.bases)))
	}
}

// Error is an API error answer.
type Error struct {
	Status  int
	Code    string
	Message string
	Field   string
	// Leader is the leader's HTTP address when a node asked to retry there.
	Leader string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("client: %d %s: %s", e.Status, e.Code, e.Message)
	if e.Field != "" {
		s += " (field " + e.Field + ")"
	}
	return s
}

// decodeError turns an error answer into an *Error.
func decodeError(status int, data []byte) *Error {
	var ae proto.APIError
	if json.Unmarshal(data, &ae) == nil && ae.Error.Code != "" {
		return &Error{Status: status, Code: ae.Error.Code, Message: ae.Error.Message, Field: ae.Error.Field, Leader: ae.Error.Leader}
	}
	return &Error{Status: status, Code: "http_" + strconv.Itoa(status), Message: strings.TrimSpace(string(data))}
}

// IsCode reports whether err is an API error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// Do sends method path with body (JSON-encoded unless it is []byte or nil)
// and decodes a 2xx answer into out (if non-nil). It returns the status.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) (int, error) {
	return c.DoHeaders(ctx, method, path, nil, body, out)
}

// DoHeaders is Do with extra request headers.
func (c *Client) DoHeaders(ctx context.Context, method, path string, hdr http.Header, body, out any) (int, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return 0, fmt.Errorf("client: encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(buf)
	}
	cur := c.cur.Load()
	base := c.bases[int(cur)%len(c.bases)]
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			c.failover(cur)
		}
		return 0, fmt.Errorf("client: %s %s: %w", method, base+path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, fmt.Errorf("client: read %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, decodeError(resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("client: decode %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// SubmitJob submits a spec and returns the accepted job.
func (c *Client) SubmitJob(ctx context.Context, spec *proto.JobSpec) (*proto.Job, error) {
	var j proto.Job
	_, err := c.Do(ctx, http.MethodPost, "/v1/jobs", spec, &j)
	return &j, err
}

// SubmitOptions are the optional parts of a submission.
type SubmitOptions struct {
	// IdempotencyKey makes retrying the same submission safe: the
	// coordinator answers a repeat with the first job.
	IdempotencyKey string
	// Wait asks the coordinator to hold the answer until the job finishes,
	// up to this long (200 with the finished job), else answer 202.
	Wait time.Duration
}

// Submit submits a spec (a *proto.JobSpec or raw JSON bytes) with options,
// and returns the job and the answer's status (202, or 200 when it
// finished within Wait).
func (c *Client) Submit(ctx context.Context, spec any, opt SubmitOptions) (*proto.Job, int, error) {
	var j proto.Job
	p := "/v1/jobs"
	if opt.Wait > 0 {
		p += "?wait=" + url.QueryEscape(opt.Wait.String())
	}
	var hdr http.Header
	if opt.IdempotencyKey != "" {
		hdr = http.Header{"Idempotency-Key": {opt.IdempotencyKey}}
	}
	status, err := c.DoHeaders(ctx, http.MethodPost, p, hdr, spec, &j)
	return &j, status, err
}

// Cancel cancels a job; reason is optional.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*proto.Job, error) {
	var j proto.Job
	var body any
	if reason != "" {
		body = map[string]string{"reason": reason}
	}
	_, err := c.Do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/cancel", body, &j)
	return &j, err
}

// Retry puts a failed, cancelled or timed-out job back in the queue.
func (c *Client) Retry(ctx context.Context, id string) (*proto.Job, error) {
	var j proto.Job
	_, err := c.Do(ctx, http.MethodPost, "/v1/jobs/"+url.PathEscape(id)+"/retry", nil, &j)
	return &j, err
}

// SubmitRaw submits a raw JSON body, for clients that pass a file through.
func (c *Client) SubmitRaw(ctx context.Context, body []byte) (*proto.Job, error) {
	var j proto.Job
	_, err := c.Do(ctx, http.MethodPost, "/v1/jobs", body, &j)
	return &j, err
}

// Job fetches one job.
func (c *Client) Job(ctx context.Context, id string) (*proto.Job, error) {
	var j proto.Job
	_, err := c.Do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, &j)
	return &j, err
}

// JobList is one page of GET /v1/jobs.
type JobList struct {
	Jobs []*proto.Job `json:"jobs"`
	Next string       `json:"next,omitempty"`
}

// Jobs lists jobs; query holds filters such as state, host, model, limit, after.
func (c *Client) Jobs(ctx context.Context, query url.Values) (*JobList, error) {
	var l JobList
	p := "/v1/jobs"
	if len(query) > 0 {
		p += "?" + query.Encode()
	}
	_, err := c.Do(ctx, http.MethodGet, p, nil, &l)
	return &l, err
}

// WaitJob polls a job until it reaches a terminal state or ctx ends.
func (c *Client) WaitJob(ctx context.Context, id string, every time.Duration) (*proto.Job, error) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		j, err := c.Job(ctx, id)
		if err == nil && j.State.Terminal() {
			return j, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return j, fmt.Errorf("client: wait for job %s: %w", id, err)
		case <-t.C:
		}
	}
}

// PutModel registers or replaces a catalog entry.
func (c *Client) PutModel(ctx context.Context, m proto.Model) (*proto.Model, error) {
	var out proto.Model
	body := map[string]any{"digest": m.Digest, "size": m.Size}
	if m.Origin != "" {
		body["origin"] = m.Origin
	}
	_, err := c.Do(ctx, http.MethodPut, "/v1/models/"+escapeName(m.Name), body, &out)
	return &out, err
}

// escapeName percent-escapes each segment of a catalog name for a URL path,
// so spaces, '?', '#' and '%' in file names reach the coordinator intact.
func escapeName(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// Models lists the catalog.
func (c *Client) Models(ctx context.Context) ([]proto.Model, error) {
	var out struct {
		Models []proto.Model `json:"models"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/v1/models", nil, &out)
	return out.Models, err
}

// Hosts lists registered hosts with their live state.
func (c *Client) Hosts(ctx context.Context) ([]proto.HostView, error) {
	var out struct {
		Hosts []proto.HostView `json:"hosts"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/v1/hosts", nil, &out)
	return out.Hosts, err
}

// Register records the agent's host.
func (c *Client) Register(ctx context.Context, h proto.Host) error {
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/register", proto.Registration{Proto: proto.Version, Host: h}, nil)
	return err
}

// Heartbeat sends the agent's live state and returns the coordinator's
// answer: its index, and the inventory version it now holds for the host
// (proto.InventoryDelta says what to send next).
func (c *Client) Heartbeat(ctx context.Context, b proto.Heartbeat) (proto.HeartbeatAck, error) {
	b.Proto = proto.Version
	var ack proto.HeartbeatAck
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/heartbeat", b, &ack)
	return ack, err
}

// Assignments long-polls for host's assignments after index.
func (c *Client) Assignments(ctx context.Context, host string, index uint64, wait time.Duration) (*proto.Assignments, error) {
	var out proto.Assignments
	q := url.Values{"host": {host}, "index": {strconv.FormatUint(index, 10)}, "wait": {wait.String()}}
	_, err := c.Do(ctx, http.MethodGet, "/v1/agent/assignments?"+q.Encode(), nil, &out)
	return &out, err
}

// Report sends a job transition.
func (c *Client) Report(ctx context.Context, r proto.JobReport) error {
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/report", r, nil)
	return err
}

// Host returns one host with its live state.
func (c *Client) Host(ctx context.Context, id string) (*proto.HostView, error) {
	var out proto.HostView
	_, err := c.Do(ctx, http.MethodGet, "/v1/hosts/"+url.PathEscape(id), nil, &out)
	return &out, err
}

// DrainHost sets (drain) or clears an operator's drain of a host and
// returns the host as it is then.
func (c *Client) DrainHost(ctx context.Context, id string, drain bool) (*proto.HostView, error) {
	var out proto.HostView
	_, err := c.Do(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(id)+"/drain", proto.DrainRequest{Drain: &drain}, &out)
	return &out, err
}

// Deregister tells the coordinator the agent's host is leaving, so it is
// marked down now rather than after the heartbeat grace.
func (c *Client) Deregister(ctx context.Context, hostID, reason string) error {
	_, err := c.Do(ctx, http.MethodPost, "/v1/agent/deregister", proto.Deregistration{Proto: proto.Version, HostID: hostID, Reason: reason}, nil)
	return err
}
