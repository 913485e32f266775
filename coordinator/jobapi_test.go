package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

var execSpec = []byte(`{"exec":{"command":["true"]}}`)

func TestIdempotencyKeyOverHTTP(t *testing.T) {
	_, api := newTestServer(t, nil)
	ctx := context.Background()
	first, status, err := api.Submit(ctx, execSpec, client.SubmitOptions{IdempotencyKey: "order-17"})
	if err != nil || status != http.StatusAccepted {
		t.Fatal(status, err)
	}
	again, _, err := api.Submit(ctx, execSpec, client.SubmitOptions{IdempotencyKey: "order-17"})
	if err != nil || again.ID != first.ID {
		t.Fatalf("same key and body: job %s (%v), want %s", again.ID, err, first.ID)
	}
	_, _, err = api.Submit(ctx, []byte(`{"exec":{"command":["false"]}}`), client.SubmitOptions{IdempotencyKey: "order-17"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusConflict || ce.Code != "idempotency_conflict" || ce.Field != "Idempotency-Key" {
		t.Fatalf("same key, other body: %v", err)
	}
	l, err := api.Jobs(ctx, nil)
	if err != nil || len(l.Jobs) != 1 {
		t.Fatalf("jobs after three submits with one key: %d (%v)", len(l.Jobs), err)
	}
	_, _, err = api.Submit(ctx, execSpec, client.SubmitOptions{IdempotencyKey: "has space"})
	if !client.IsCode(err, "invalid_header") {
		t.Fatalf("bad key: %v", err)
	}
}

func TestSubmitWait(t *testing.T) {
	_, api := newTestServer(t, nil)
	ctx := context.Background()
	// Nothing can run it (no host): after the wait, 202 with the queued job.
	j, status, err := api.Submit(ctx, execSpec, client.SubmitOptions{Wait: 200 * time.Millisecond})
	if err != nil || status != http.StatusAccepted || j.State != proto.JobQueued {
		t.Fatalf("wait on a job that cannot finish: %d %s %v", status, j.State, err)
	}
	// A job that finishes during the wait comes back finished with 200.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			l, err := api.Jobs(ctx, map[string][]string{"state": {"queued"}})
			if err == nil {
				for _, q := range l.Jobs {
					if q.ID != j.ID {
						api.Cancel(ctx, q.ID, "finished by the test")
						return
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	fin, status, err := api.Submit(ctx, execSpec, client.SubmitOptions{Wait: 20 * time.Second})
	<-done
	if err != nil || status != http.StatusOK || fin.State != proto.JobCancelled {
		t.Fatalf("wait on a job that ends: %d %s %v", status, fin.State, err)
	}
	r := rawCall(t, "POST", api.Base()+"/v1/jobs?wait=forever", execSpec)
	if r.status != 400 || decodeErrorBody(t, r).Field != "wait" {
		t.Fatalf("bad wait: %d %s", r.status, r.body)
	}
}

// collectEvents reads a job's stream until it ends.
func collectEvents(t *testing.T, api *client.Client, id string, after uint64) []client.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var evs []client.Event
	if err := api.WatchJob(ctx, id, after, func(ev client.Event) error {
		evs = append(evs, ev)
		return nil
	}); err != nil {
		t.Fatalf("watch %s: %v", id, err)
	}
	return evs
}

func TestJobEventStream(t *testing.T) {
	tc := startTestCluster(t, 3, false, nil)
	l := tc.leader(nil)
	api := tc.api[l]
	f := (l + 1) % 3
	ctx := context.Background()
	registerHost(t, api, "h1", []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})

	// The cluster-wide stream, read from a follower.
	allCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	allEvents := make(chan client.Event, 64)
	go tc.api[f].WatchAll(allCtx, 0, func(ev client.Event) error {
		allEvents <- ev
		return nil
	})

	j, _, err := api.Submit(ctx, execSpec, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	j = waitForPlacement(t, api, j.ID)
	report := func(r proto.JobReport) {
		r.JobID, r.HostID, r.Epoch = j.ID, "h1", j.Placement.Epoch
		if err := api.Report(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	report(proto.JobReport{State: proto.JobRunning, Progress: &proto.Progress{Value: 3, Max: 20, Node: "3"}})
	report(proto.JobReport{State: proto.JobSucceeded, RunS: 1})

	// A follower serves the whole history (progress is live-only) and ends.
	tc.waitConverged()
	evs := collectEvents(t, tc.api[f], j.ID, 0)
	var types []string
	for _, ev := range evs {
		var je proto.JobEvent
		json.Unmarshal(ev.Data, &je)
		types = append(types, ev.Type+":"+string(je.State))
	}
	want := []string{"state:queued", "placement:", "state:placed", "state:running", "state:succeeded", "end:succeeded"}
	if !slices.Equal(types, want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	// Resuming after the placement event replays only what followed.
	resumed := collectEvents(t, api, j.ID, evs[1].ID)
	if len(resumed) != 4 || resumed[0].ID != evs[2].ID {
		t.Fatalf("resumed from %d: %d events starting at %d", evs[1].ID, len(resumed), resumed[0].ID)
	}
	// The dashboard stream saw the live progress too.
	var sawProgress bool
	timeout := time.After(10 * time.Second)
	for !sawProgress {
		select {
		case ev := <-allEvents:
			sawProgress = ev.Type == proto.EventProgress && strings.Contains(string(ev.Data), `"value":3`)
		case <-timeout:
			t.Fatal("cluster-wide stream never carried the progress event")
		}
	}
	r := rawCall(t, "GET", api.Base()+"/v1/jobs/nope/events", nil)
	if r.status != 404 {
		t.Fatalf("events of an unknown job: %d", r.status)
	}
}

func TestAuthScopes(t *testing.T) {
	const (
		submitTok = "submit-token-0123456789"
		readTok   = "read-token-0123456789ab"
		agentTok  = "agent-token-0123456789a"
		adminTok  = "admin-token-0123456789a"
	)
	s, _ := newTestServer(t, func(c *Config) {
		c.Tokens = []Token{
			{Name: "ci", Secret: submitTok, Scopes: []Scope{ScopeSubmit}},
			{Name: "dash", Secret: readTok, Scopes: []Scope{ScopeRead}},
			{Name: "agents", Secret: agentTok, Scopes: []Scope{ScopeAgent}},
			{Name: "ops", Secret: adminTok, Scopes: []Scope{ScopeAdmin}},
		}
		c.OpenMetrics = false
	})
	call := func(method, path, token string, body []byte) (int, proto.ErrorBody) {
		req, _ := http.NewRequest(method, s.URL()+path, strings.NewReader(string(body)))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var e proto.APIError
		json.Unmarshal(b, &e)
		return resp.StatusCode, e.Error
	}
	cases := []struct {
		method, path, token string
		body                []byte
		status              int
		code                string
	}{
		{"POST", "/v1/jobs", "", execSpec, 401, "unauthorized"},
		{"POST", "/v1/jobs", "wrong-token-0123456789", execSpec, 401, "unauthorized"},
		{"POST", "/v1/jobs", readTok, execSpec, 403, "forbidden"},
		{"POST", "/v1/jobs", submitTok, execSpec, 202, ""},
		{"GET", "/v1/jobs", readTok, nil, 200, ""},
		{"GET", "/v1/jobs", agentTok, nil, 403, "forbidden"},
		{"POST", "/v1/agent/heartbeat", submitTok, []byte(`{}`), 403, "forbidden"},
		{"GET", "/v1/hosts", adminTok, nil, 200, ""},
		{"POST", "/v1/hosts/nope/drain", submitTok, nil, 403, "forbidden"},
		{"POST", "/v1/hosts/nope/drain", agentTok, nil, 403, "forbidden"},
		{"POST", "/v1/hosts/nope/drain", adminTok, nil, 404, "host_not_found"},
		{"GET", "/v1/hosts/nope", readTok, nil, 404, "host_not_found"},
		{"PUT", "/v1/models/checkpoints/x.safetensors", submitTok, []byte(`{}`), 403, "forbidden"},
		{"GET", "/healthz", "", nil, 200, ""},
		{"GET", "/metrics", "", nil, 401, "unauthorized"},
		{"GET", "/metrics", readTok, nil, 200, ""},
	}
	for _, c := range cases {
		status, e := call(c.method, c.path, c.token, c.body)
		if status != c.status || e.Code != c.code {
			t.Errorf("%s %s with %q: %d %s (%s), want %d %s", c.method, c.path, c.token, status, e.Code, e.Message, c.status, c.code)
		}
	}
	if _, e := call("POST", "/v1/jobs", readTok, execSpec); !strings.Contains(e.Message, `"dash"`) || !strings.Contains(e.Message, "submit") {
		t.Errorf("403 message should name the token and the missing scope: %q", e.Message)
	}
}

// TestHostDownRequeuesItsJobs: a host that stops heartbeating is marked
// down after the grace, its job is placed again on a live host with a
// new epoch, and the silent host's late report is refused.
func TestHostDownRequeuesItsJobs(t *testing.T) {
	s, api := newTestServer(t, func(c *Config) {
		c.HeartbeatGrace = 300 * time.Millisecond
		c.RequeueBackoff, c.RequeueBackoffMax = 10*time.Millisecond, 50*time.Millisecond
	})
	ctx := context.Background()
	one := []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}
	registerHost(t, api, "h1", one, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})
	j := waitForPlacement(t, api, submitWithWebhook(t, api, "").ID)
	if j.Placement.Host != "h1" {
		t.Fatalf("placed on %s", j.Placement.Host)
	}
	// h2 comes up and keeps beating; h1 goes silent.
	registerHost(t, api, "h2", one, nil)
	stop := beatUntil(t, api, proto.Heartbeat{HostID: "h2"})
	defer stop()
	var moved *proto.Job
	waitFor(t, "the job to move to h2", func() bool {
		cur, _ := s.FSM().Job(j.ID)
		moved = cur
		return cur.Placement != nil && cur.Placement.Host == "h2"
	})
	if moved.Attempts != 2 || moved.Placement.Epoch <= j.Placement.Epoch {
		t.Fatalf("after requeue: attempts %d epoch %d (was %d)", moved.Attempts, moved.Placement.Epoch, j.Placement.Epoch)
	}
	h1, _ := s.FSM().Host("h1")
	if h1.DownAt == nil || !strings.Contains(h1.DownReason, "no heartbeat") {
		t.Fatalf("h1 not marked down: %+v", h1)
	}
	err := api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: "h1", Epoch: j.Placement.Epoch, State: proto.JobSucceeded})
	if !client.IsCode(err, "stale_epoch") {
		t.Fatalf("late report from the down host: %v", err)
	}
	// h1 is back with its next heartbeat.
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})
	if h1, _ := s.FSM().Host("h1"); h1.DownAt != nil {
		t.Fatal("a heartbeat did not bring h1 back")
	}
}

func TestDataDirProblemsAreClearErrors(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTPAddr, cfg.RaftAddr, cfg.Bootstrap = "127.0.0.1:0", "127.0.0.1:0", true
	file := t.TempDir() + "/not-a-dir"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = file
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "cannot be created") {
		t.Fatalf("data dir that is a file: %v", err)
	}
	if os.Geteuid() != 0 { // root writes through permission bits
		ro := t.TempDir()
		os.Chmod(ro, 0o500)
		defer os.Chmod(ro, 0o700)
		cfg.DataDir = ro
		if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "not writable") {
			t.Fatalf("read-only data dir: %v", err)
		}
	}
	cfg.DataDir = t.TempDir()
	cfg.MinFreeBytes = 1 << 62 // more than any disk has: the "full disk" case
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("full data dir: %v", err)
	}
}
