package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// rawResponse is one HTTP answer read in full.
type rawResponse struct {
	status int
	header http.Header
	body   []byte
}

// rawCall sends body (nil for none) with net/http, so tests can send bytes
// the typed client would never produce and read headers it hides.
func rawCall(t *testing.T, method, target string, body []byte) rawResponse {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		t.Fatalf("build %s %s: %v", method, target, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s %s: %v", method, target, err)
	}
	return rawResponse{status: resp.StatusCode, header: resp.Header, body: data}
}

// decodeErrorBody checks r is the API's error shape
// {"error": {"code", "message", "field"}} and nothing else, and returns it.
func decodeErrorBody(t *testing.T, r rawResponse) proto.ErrorBody {
	t.Helper()
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("error answer has Content-Type %q, want application/json", ct)
	}
	var shape struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&shape); err != nil || shape.Error == nil {
		t.Fatalf("error answer %q is not {\"error\":{\"code\",\"message\",\"field\"}}: %v", r.body, err)
	}
	if shape.Error.Code == "" || shape.Error.Message == "" {
		t.Errorf("error answer %q lacks a code or a message", r.body)
	}
	return proto.ErrorBody{Code: shape.Error.Code, Message: shape.Error.Message, Field: shape.Error.Field}
}

func TestAPIBadInputIsRefusedBeforeRaft(t *testing.T) {
	s, api := newTestServer(t, func(c *Config) { c.MaxBodyBytes = 4096 })
	putTestModel(t, api, "checkpoints/a.safetensors", 100<<20)
	digest := string(testDigest("b"))

	cases := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		code   string
		field  string
		msg    []string // substrings the message must contain
	}{
		{name: "malformed JSON", body: `{"worker": {nope}}`, status: 400, code: "malformed_json"},
		{name: "truncated JSON", body: `{"worker": {`, status: 400, code: "malformed_json"},
		{name: "empty body", body: ``, status: 400, code: "empty_body"},
		{name: "trailing garbage", body: `{"worker": {}} trailing`, status: 400, code: "malformed_json", msg: []string{"trailing"}},
		{name: "second object", body: `{"worker": {}} {"worker": {}}`, status: 400, code: "malformed_json"},
		{name: "body over the limit", body: `{"worker": {"input": "` + strings.Repeat("x", 8<<10) + `"}}`,
			status: 413, code: "body_too_large", msg: []string{"4096"}},
		{name: "unknown top-level field", body: `{"worker": {}, "priorty": 5}`, status: 400, code: "unknown_field", field: "priorty", msg: []string{"priorty"}},
		// encoding/json names an unknown field without its parent's path.
		{name: "unknown field in worker payload", body: `{"worker": {"modelz": ["checkpoints/a.safetensors"]}}`,
			status: 400, code: "unknown_field", field: "modelz"},
		{name: "wrong type", body: `{"worker": {"models": "checkpoints/a.safetensors"}}`, status: 400, code: "invalid_type", field: "worker.models"},
		{name: "no payload", body: `{"priority": 1}`, status: 400, code: "invalid_spec", field: "workflow"},
		{name: "two payloads", body: `{"worker": {}, "exec": {"command": ["true"]}}`, status: 400, code: "invalid_spec", field: "workflow"},
		{name: "priority too high", body: `{"worker": {}, "priority": 5000}`, status: 400, code: "invalid_field", field: "priority"},
		{name: "priority too low", body: `{"worker": {}, "priority": -5000}`, status: 400, code: "invalid_field", field: "priority"},
		{name: "workflow is an array", body: `{"workflow": [{"class_type": "SaveImage"}]}`, status: 400, code: "invalid_workflow", field: "workflow"},
		{name: "node not an object", body: `{"workflow": {"4": "CheckpointLoaderSimple"}}`, status: 400, code: "invalid_workflow", field: "workflow.4"},
		{name: "node without class_type", body: `{"workflow": {"4": {"inputs": {}}}}`, status: 400, code: "invalid_workflow", field: "workflow.4.class_type"},
		{name: "inputs not an object", body: `{"workflow": {"4": {"class_type": "SaveImage", "inputs": ["4", 0]}}}`,
			status: 400, code: "invalid_workflow", field: "workflow.4.inputs"},
		{name: "link to a missing node", body: `{"workflow": {"9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}}`,
			status: 400, code: "invalid_workflow", field: "workflow.9.inputs.images", msg: []string{`"7"`}},
		{name: "ckpt_name with ..", body: string(workflowWith("../../etc/passwd")), status: 400, code: "invalid_workflow", field: "workflow.4.inputs.ckpt_name"},
		{name: "absolute ckpt_name", body: string(workflowWith("/etc/passwd")), status: 400, code: "invalid_workflow", field: "workflow.4.inputs.ckpt_name"},
		{name: "worker model name with ..", body: `{"worker": {"models": ["checkpoints/a.safetensors", "checkpoints/../../x"]}}`,
			status: 400, code: "invalid_model_name", field: "worker.models[1]"},
		{name: "exec with an empty command", body: `{"exec": {"command": []}}`, status: 400, code: "invalid_field", field: "exec.command"},
		{name: "exec with an empty program", body: `{"exec": {"command": [""]}}`, status: 400, code: "invalid_field", field: "exec.command"},
		{name: "model not in the catalog", body: string(workflowWith("missing.safetensors")), status: 422, code: "model_not_found",
			field: "workflow.4.inputs.ckpt_name", msg: []string{"node 4", "ckpt_name", "checkpoints/missing.safetensors"}},
		{name: "worker model not in the catalog", body: `{"worker": {"models": ["checkpoints/missing.safetensors"]}}`,
			status: 422, code: "model_not_found", field: "worker.models[0]"},

		{name: "model with a bad digest", method: "PUT", path: "/v1/models/checkpoints/b.safetensors",
			body: `{"digest": "sha256:nope", "size": 10}`, status: 400, code: "invalid_field", field: "digest"},
		{name: "model with a negative size", method: "PUT", path: "/v1/models/checkpoints/b.safetensors",
			body: `{"digest": "` + digest + `", "size": -1}`, status: 400, code: "invalid_field", field: "size"},
		{name: "model name with ..", method: "PUT", path: "/v1/models/checkpoints/../b.safetensors",
			body: `{"digest": "` + digest + `", "size": 10}`, status: 400, code: "invalid_field", field: "name", msg: []string{".."}},
		{name: "model name with escaped ..", method: "PUT", path: "/v1/models/checkpoints/%2E%2E/b.safetensors",
			body: `{"digest": "` + digest + `", "size": 10}`, status: 400, code: "invalid_field", field: "name"},
		{name: "model with an absolute origin", method: "PUT", path: "/v1/models/checkpoints/b.safetensors",
			body: `{"digest": "` + digest + `", "size": 10, "origin": "/etc/passwd"}`, status: 400, code: "invalid_field", field: "origin"},
		{name: "model with an unknown field", method: "PUT", path: "/v1/models/checkpoints/b.safetensors",
			body: `{"digest": "` + digest + `", "size": 10, "sha": "x"}`, status: 400, code: "unknown_field", field: "sha"},

		{name: "unknown route", method: "GET", path: "/v1/nope", status: 404, code: "not_found"},
		{name: "wrong method", method: "DELETE", path: "/v1/jobs", status: 405, code: "method_not_allowed"},
		{name: "unknown job", method: "GET", path: "/v1/jobs/0123456789abcdef01234567", status: 404, code: "job_not_found"},
		{name: "unknown model", method: "GET", path: "/v1/models/checkpoints/nope.safetensors", status: 404, code: "model_not_found", field: "name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method, path := tc.method, tc.path
			if method == "" {
				method, path = http.MethodPost, "/v1/jobs"
			}
			var body []byte
			if method != http.MethodGet && method != http.MethodDelete {
				body = []byte(tc.body)
			}
			before := s.FSM().Index()
			r := rawCall(t, method, s.URL()+path, body)
			if r.status != tc.status {
				t.Errorf("status %d, want %d (body %s)", r.status, tc.status, r.body)
			}
			e := decodeErrorBody(t, r)
			if e.Code != tc.code || e.Field != tc.field {
				t.Errorf("code %q field %q, want code %q field %q (message %q)", e.Code, e.Field, tc.code, tc.field, e.Message)
			}
			for _, m := range tc.msg {
				if !strings.Contains(e.Message, m) {
					t.Errorf("message %q does not mention %q", e.Message, m)
				}
			}
			if after := s.FSM().Index(); after != before {
				t.Errorf("FSM index moved from %d to %d: a refused request reached the Raft log", before, after)
			}
		})
	}
	if l, err := api.Jobs(context.Background(), nil); err != nil || len(l.Jobs) != 0 {
		t.Fatalf("after only bad submits the job list is %+v, %v; want empty", l, err)
	}
}

func TestSubmitAcceptsWorkflowAndResolvesModels(t *testing.T) {
	s, api := newTestServer(t, nil)
	const size = 100 << 20
	m := putTestModel(t, api, "checkpoints/a.safetensors", size)

	before := s.FSM().Index()
	r := rawCall(t, http.MethodPost, s.URL()+"/v1/jobs", workflowWith("a.safetensors"))
	if r.status != http.StatusAccepted {
		t.Fatalf("submit: status %d, want 202 (body %s)", r.status, r.body)
	}
	var j proto.Job
	if err := json.Unmarshal(r.body, &j); err != nil {
		t.Fatalf("decode submitted job %s: %v", r.body, err)
	}
	if j.ID == "" || r.header.Get("Location") != "/v1/jobs/"+j.ID {
		t.Fatalf("Location %q, want /v1/jobs/%s", r.header.Get("Location"), j.ID)
	}
	if j.State != proto.JobQueued || j.Attempts != 0 || j.Placement != nil || j.SubmittedAt.IsZero() {
		t.Fatalf("accepted job: state %s attempts %d placement %+v submitted %v; want a fresh queued job", j.State, j.Attempts, j.Placement, j.SubmittedAt)
	}
	want := proto.ModelRef{Name: m.Name, Digest: testDigest(m.Name), Size: size, Origin: m.Name, Node: "4", Input: "ckpt_name"}
	if len(j.Models) != 1 || !reflect.DeepEqual(j.Models[0], want) {
		t.Fatalf("resolved models %+v, want [%+v]", j.Models, want)
	}
	if after := s.FSM().Index(); after != before+1 || j.Index != after {
		t.Fatalf("FSM index %d -> %d, job index %d; want one entry for the submit", before, after, j.Index)
	}

	got, err := api.Job(context.Background(), j.ID)
	if err != nil {
		t.Fatalf("get job: %v", err)
	}
	if got.ID != j.ID || got.State != proto.JobQueued || len(got.Models) != 1 || !reflect.DeepEqual(got.Models[0], want) || !got.SubmittedAt.Equal(j.SubmittedAt) {
		t.Fatalf("GET /v1/jobs/%s = %+v, want the accepted job %+v", j.ID, got, j)
	}
	if !bytes.Equal(got.Spec.Workflow, j.Spec.Workflow) || !json.Valid(got.Spec.Workflow) {
		t.Fatalf("stored workflow %s differs from the accepted one %s", got.Spec.Workflow, j.Spec.Workflow)
	}
}

func TestSubmitModelNameWithSpaceRoundTrips(t *testing.T) {
	// A catalog name that needs escaping in a URL path must be stored
	// decoded, or a workflow naming the file could never resolve it.
	_, api := newTestServer(t, nil)
	const name = "loras/pixel art.safetensors"
	m := putTestModel(t, api, name, 1<<20)
	if m.Name != name {
		t.Fatalf("PUT stored the name %q, want %q", m.Name, name)
	}
	var got proto.Model
	if _, err := api.Do(context.Background(), http.MethodGet, "/v1/models/loras/pixel%20art.safetensors", nil, &got); err != nil || got.Name != name {
		t.Fatalf("GET the escaped name = %+v, %v; want %q", got, err, name)
	}
	j, err := api.SubmitRaw(context.Background(), []byte(`{"workflow": {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "pixel art.safetensors"}}}}`))
	if err != nil {
		t.Fatalf("submit a workflow naming %q: %v", name, err)
	}
	if len(j.Models) != 1 || j.Models[0].Name != name || j.Models[0].Digest != testDigest(name) {
		t.Fatalf("resolved models %+v, want %q", j.Models, name)
	}
}

func TestJobIDsSortInSubmitOrder(t *testing.T) {
	now := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	// Same millisecond, then a clock that steps back, then forward again.
	times := []time.Time{now, now, now, now.Add(-time.Second), now, now.Add(time.Millisecond), now.Add(time.Hour)}
	prev := ""
	for i, at := range times {
		id := newJobID(at)
		if len(id) != 24 {
			t.Fatalf("id %q has %d characters, want 24", id, len(id))
		}
		if _, err := strconv.ParseUint(id[:12], 16, 64); err != nil {
			t.Fatalf("id %q does not start with 12 hex digits: %v", id, err)
		}
		if id <= prev {
			t.Fatalf("id %d %q does not sort after the previous %q", i, id, prev)
		}
		prev = id
	}
}

// submitN submits n worker jobs and returns their ids in submit order.
func submitN(t *testing.T, api *client.Client, n int, body string) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for i := 0; i < n; i++ {
		j, err := api.SubmitRaw(context.Background(), []byte(body))
		if err != nil {
			t.Fatalf("submit %d: %v", i, err)
		}
		ids = append(ids, j.ID)
	}
	return ids
}

func TestListJobsPagination(t *testing.T) {
	_, api := newTestServer(t, nil)
	ids := submitN(t, api, 5, `{"worker": {}}`)

	var walked []string
	seen := map[string]bool{}
	after := ""
	pages := 0
	for {
		q := url.Values{"limit": {"2"}}
		if after != "" {
			q.Set("after", after)
		}
		l, err := api.Jobs(context.Background(), q)
		if err != nil {
			t.Fatalf("list page %d: %v", pages, err)
		}
		pages++
		if len(l.Jobs) > 2 {
			t.Fatalf("page %d has %d jobs, limit was 2", pages, len(l.Jobs))
		}
		for _, j := range l.Jobs {
			if seen[j.ID] {
				t.Fatalf("job %s listed twice", j.ID)
			}
			seen[j.ID] = true
			walked = append(walked, j.ID)
		}
		if l.Next == "" {
			break
		}
		if len(l.Jobs) == 0 || l.Next != l.Jobs[len(l.Jobs)-1].ID {
			t.Fatalf("page %d: next %q is not its last job", pages, l.Next)
		}
		if pages > 5 {
			t.Fatalf("pagination does not end: %d pages for 5 jobs", pages)
		}
		after = l.Next
	}
	if pages != 3 {
		t.Errorf("walked %d pages, want 3 for 5 jobs at limit 2", pages)
	}
	if strings.Join(walked, ",") != strings.Join(ids, ",") {
		t.Fatalf("walked %v, want submit order %v", walked, ids)
	}

	for _, q := range []struct{ key, val, field string }{
		{"state", "sleeping", "state"},
		{"limit", "0", "limit"},
		{"limit", "1001", "limit"},
		{"limit", "two", "limit"},
	} {
		_, err := api.Jobs(context.Background(), url.Values{q.key: {q.val}})
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Code != "invalid_query" || ae.Field != q.field {
			t.Errorf("GET /v1/jobs?%s=%s: %v; want 400 invalid_query on field %s", q.key, q.val, err, q.field)
		}
	}
}

func TestListJobsFilterByState(t *testing.T) {
	s, api := newTestServer(t, nil)
	ctx := context.Background()
	placed := submitN(t, api, 3, `{"worker": {}}`)
	// The test plays the agent's side: it registers a host and heartbeats
	// through the real agent API so the scheduler places the three jobs.
	// Two slots: a slot takes a job and one behind it, no more.
	if err := api.Register(ctx, proto.Host{ID: "h1", DeviceKind: "simulated", GPUs: []proto.GPU{{Index: 0, Slots: 2, SlotBytes: 1 << 30}}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	if _, err := api.Heartbeat(ctx, proto.Heartbeat{HostID: "h1", Time: time.Now()}); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	for _, id := range placed {
		waitForPlacement(t, api, id)
	}
	// A draining host takes nothing new, so the next two stay queued.
	if _, err := api.Heartbeat(ctx, proto.Heartbeat{HostID: "h1", Time: time.Now(), Draining: true}); err != nil {
		t.Fatalf("draining heartbeat: %v", err)
	}
	queued := submitN(t, api, 2, `{"worker": {}}`)

	for _, tc := range []struct {
		q    url.Values
		want []string
	}{
		{url.Values{"state": {"placed"}}, placed},
		{url.Values{"state": {"queued"}}, queued},
		{url.Values{"state": {"running"}}, nil},
		{url.Values{"host": {"h1"}}, placed},
		{url.Values{"state": {"queued"}, "limit": {"1"}}, queued[:1]},
	} {
		l, err := api.Jobs(ctx, tc.q)
		if err != nil {
			t.Fatalf("list %s: %v", tc.q.Encode(), err)
		}
		var got []string
		for _, j := range l.Jobs {
			got = append(got, j.ID)
		}
		if strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("list %s = %v, want %v", tc.q.Encode(), got, tc.want)
		}
	}
	if c := s.FSM().Counts(); c[proto.JobPlaced] != 3 || c[proto.JobQueued] != 2 {
		t.Errorf("FSM counts %v, want 3 placed and 2 queued", c)
	}
}

func TestHealthReadyAndCluster(t *testing.T) {
	s, api := newTestServer(t, nil)
	putTestModel(t, api, "checkpoints/a.safetensors", 1<<20)
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready"} {
		r := rawCall(t, http.MethodGet, s.URL()+path, nil)
		var body map[string]string
		if r.status != http.StatusOK || json.Unmarshal(r.body, &body) != nil || body["status"] != want {
			t.Errorf("GET %s = %d %s, want 200 with status %q", path, r.status, r.body, want)
		}
	}

	var cs ClusterStatus
	if _, err := api.Do(context.Background(), http.MethodGet, "/v1/cluster", nil, &cs); err != nil {
		t.Fatalf("GET /v1/cluster: %v", err)
	}
	if cs.NodeID != "coord-1" || cs.State != "Leader" || cs.Leader.ID != cs.NodeID || cs.Leader.Address == "" {
		t.Fatalf("cluster %+v: want this node (coord-1) named leader", cs)
	}
	if len(cs.Voters) != 1 || cs.Voters[0].ID != cs.NodeID || cs.Voters[0].Address != cs.Leader.Address {
		t.Fatalf("voters %+v, want this node as the only voter at %s", cs.Voters, cs.Leader.Address)
	}
	// Raft's own applied index may trail the FSM's for a moment, so it is
	// only checked for being set and consistent with the log.
	if cs.AppliedIndex == 0 || cs.CommitIndex < cs.AppliedIndex || cs.LastIndex < cs.CommitIndex {
		t.Fatalf("indexes last %d commit %d applied %d: want 0 < applied <= commit <= last", cs.LastIndex, cs.CommitIndex, cs.AppliedIndex)
	}
	if cs.Jobs == nil {
		t.Fatalf("cluster status has no job counts")
	}
}

// metricValue returns the value of the sample whose name and labels are
// exactly series in a Prometheus text exposition.
func metricValue(t *testing.T, exposition []byte, series string) (float64, bool) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(exposition))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || name != series {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			t.Fatalf("metric %s has value %q: %v", series, val, err)
		}
		return f, true
	}
	return 0, false
}

func TestMetricsCountAcceptedJobs(t *testing.T) {
	s, api := newTestServer(t, nil)
	putTestModel(t, api, "checkpoints/a.safetensors", 1<<20)
	submitN(t, api, 3, string(workflowWith("a.safetensors")))
	// Refused submits are not counted.
	if _, err := api.SubmitRaw(context.Background(), workflowWith("missing.safetensors")); !client.IsCode(err, "model_not_found") {
		t.Fatalf("submit of an unknown model: %v, want model_not_found", err)
	}
	r := rawCall(t, http.MethodGet, s.URL()+"/metrics", nil)
	if r.status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", r.status, r.body)
	}
	for series, want := range map[string]float64{
		"hearth_jobs_submitted_total":     3,
		"hearth_job_accept_seconds_count": 3,
		`hearth_jobs{state="queued"}`:     3,
		"hearth_raft_leader":              1,
	} {
		got, ok := metricValue(t, r.body, series)
		if !ok || got != want {
			t.Errorf("metric %s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if got, ok := metricValue(t, r.body, `hearth_job_accept_seconds_bucket{le="+Inf"}`); !ok || got != 3 {
		t.Errorf("hearth_job_accept_seconds +Inf bucket = %v (present %v), want 3", got, ok)
	}
	if got, ok := metricValue(t, r.body, "hearth_job_accept_seconds_sum"); !ok || got <= 0 {
		t.Errorf("hearth_job_accept_seconds_sum = %v (present %v), want > 0", got, ok)
	}
	if got, ok := metricValue(t, r.body, "hearth_raft_applied_index"); !ok || got < 4 {
		t.Errorf("hearth_raft_applied_index = %v (present %v), want at least the 4 entries written", got, ok)
	}
	// Raft's own state and the commit, apply and batch histograms.
	for _, series := range []string{
		`hearth_raft_state{state="leader"}`,
		"hearth_raft_commit_index",
		`hearth_raft_commit_seconds_count{command="submit-jobs"}`,
		`hearth_fsm_apply_seconds_count{command="submit-jobs"}`,
		"hearth_submit_batch_jobs_count",
	} {
		if got, ok := metricValue(t, r.body, series); !ok || got < 1 {
			t.Errorf("metric %s = %v (present %v), want at least 1", series, got, ok)
		}
	}
}

func TestMetricsQueueDepthByPriority(t *testing.T) {
	s, api := newTestServer(t, nil)
	putTestModel(t, api, modelA, modelASize)
	submitWorkflow(t, api, "a.safetensors", 5)
	submitWorkflow(t, api, "a.safetensors", 5)
	submitWorkflow(t, api, "a.safetensors", -1)
	waitFor(t, "the queue-depth gauges", func() bool {
		r := rawCall(t, http.MethodGet, s.URL()+"/metrics", nil)
		hi, ok1 := metricValue(t, r.body, `hearth_queue_depth{priority="5"}`)
		lo, ok2 := metricValue(t, r.body, `hearth_queue_depth{priority="-1"}`)
		return ok1 && ok2 && hi == 2 && lo == 1
	})
}

func TestAgentHeartbeatFromUnregisteredHost(t *testing.T) {
	s, api := newTestServer(t, nil)
	before := s.FSM().Index()
	_, err := api.Heartbeat(context.Background(), proto.Heartbeat{HostID: "ghost", Time: time.Now()})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != "host_not_registered" {
		t.Fatalf("heartbeat from an unregistered host: %v, want 404 host_not_registered", err)
	}
	_, err = api.Assignments(context.Background(), "ghost", 0, time.Second)
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Code != "host_not_registered" {
		t.Fatalf("assignments for an unregistered host: %v, want 404 host_not_registered", err)
	}
	if after := s.FSM().Index(); after != before {
		t.Fatalf("FSM index moved from %d to %d", before, after)
	}
}

func TestAgentRegisterWithWrongProtocol(t *testing.T) {
	s, api := newTestServer(t, nil)
	before := s.FSM().Index()
	for _, v := range []int{proto.Version + 1, proto.Version - 1} {
		body, _ := json.Marshal(proto.Registration{Proto: v, Host: proto.Host{ID: "h1", DeviceKind: "simulated"}})
		r := rawCall(t, http.MethodPost, s.URL()+"/v1/agent/register", body)
		e := decodeErrorBody(t, r)
		if r.status != http.StatusBadRequest || e.Code != "unsupported_protocol" || e.Field != "proto" {
			t.Errorf("register with proto %d: %d %+v, want 400 unsupported_protocol on field proto", v, r.status, e)
		}
	}
	if after := s.FSM().Index(); after != before {
		t.Fatalf("FSM index moved from %d to %d", before, after)
	}
	if hosts, err := api.Hosts(context.Background()); err != nil || len(hosts) != 0 {
		t.Fatalf("hosts after refused registrations: %+v, %v; want none", hosts, err)
	}
}

// placedJob sets up one job placed on host h1 (1 GPU, 1 slot); the test
// plays the agent's side through the real agent API.
func placedJob(t *testing.T, api *client.Client) *proto.Job {
	t.Helper()
	ctx := context.Background()
	putTestModel(t, api, "checkpoints/a.safetensors", 1<<20)
	if err := api.Register(ctx, proto.Host{ID: "h1", DeviceKind: "simulated", GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	if _, err := api.Heartbeat(ctx, proto.Heartbeat{HostID: "h1", Time: time.Now()}); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	j, err := api.SubmitRaw(ctx, workflowWith("a.safetensors"))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return waitForPlacement(t, api, j.ID)
}

func TestAgentReportWithStaleEpoch(t *testing.T) {
	_, api := newTestServer(t, nil)
	ctx := context.Background()
	j := placedJob(t, api)
	for _, r := range []proto.JobReport{
		{JobID: j.ID, HostID: "h1", Epoch: j.Placement.Epoch + 1, State: proto.JobFetching},
		{JobID: j.ID, HostID: "h1", Epoch: j.Placement.Epoch - 1, State: proto.JobFetching},
		{JobID: j.ID, HostID: "h2", Epoch: j.Placement.Epoch, State: proto.JobFetching},
	} {
		err := api.Report(ctx, r)
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != "stale_epoch" {
			t.Errorf("report from host %s epoch %d (placement epoch %d): %v, want 409 stale_epoch", r.HostID, r.Epoch, j.Placement.Epoch, err)
		}
	}
	got, err := api.Job(ctx, j.ID)
	if err != nil {
		t.Fatalf("get job: %v", err)
	}
	if got.State != proto.JobPlaced || got.Index != j.Index || got.StartedAt != nil || got.Placement.Epoch != j.Placement.Epoch {
		t.Fatalf("job after stale reports: state %s index %d started %v; want it unchanged (placed, index %d)", got.State, got.Index, got.StartedAt, j.Index)
	}
}

func TestAgentReportMovingBackwards(t *testing.T) {
	_, api := newTestServer(t, nil)
	ctx := context.Background()
	j := placedJob(t, api)
	ep := j.Placement.Epoch
	if err := api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: "h1", Epoch: ep, State: proto.JobRunning, Progress: &proto.Progress{Value: 1, Max: 10}}); err != nil {
		t.Fatalf("report running: %v", err)
	}
	running, err := api.Job(ctx, j.ID)
	if err != nil || running.State != proto.JobRunning || running.StartedAt == nil {
		t.Fatalf("after a running report: %+v, %v", running, err)
	}
	err = api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: "h1", Epoch: ep, State: proto.JobFetching})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != "bad_transition" {
		t.Fatalf("report running → fetching: %v, want 409 bad_transition", err)
	}
	// States an agent may never report are refused before Raft.
	for _, st := range []proto.JobState{proto.JobQueued, proto.JobPlaced, proto.JobCancelled, "sleeping"} {
		err := api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: "h1", Epoch: ep, State: st})
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || ae.Field != "state" {
			t.Errorf("report %q: %v, want 400 on field state", st, err)
		}
	}
	got, err := api.Job(ctx, j.ID)
	if err != nil {
		t.Fatalf("get job: %v", err)
	}
	if got.State != proto.JobRunning || got.Index != running.Index || got.Progress == nil || got.Progress.Value != 1 {
		t.Fatalf("job after refused reports: %+v; want it still running at index %d", got, running.Index)
	}
}

func TestAgentAssignmentsLongPoll(t *testing.T) {
	s, api := newTestServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	putTestModel(t, api, "checkpoints/a.safetensors", 1<<20)
	j, err := api.SubmitRaw(ctx, workflowWith("a.safetensors"))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	// The test plays the agent's side. Registered but not yet heartbeating,
	// h1 is not alive, so the job stays queued.
	if err := api.Register(ctx, proto.Host{ID: "h1", DeviceKind: "simulated", GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	idx := s.FSM().Index()

	// Behind the current index, the poll answers at once, well inside the
	// context's deadline even though it asks to wait a minute.
	a, err := api.Assignments(ctx, "h1", 0, time.Minute)
	if err != nil {
		t.Fatalf("poll behind the index: %v", err)
	}
	if a.Index < idx || len(a.Assignments) != 0 {
		t.Fatalf("poll behind the index = %+v; want index >= %d and no assignments yet", a, idx)
	}

	type answer struct {
		a   *proto.Assignments
		err error
	}
	done := make(chan answer, 1)
	go func() {
		a, err := api.Assignments(ctx, "h1", idx, time.Minute)
		done <- answer{a, err}
	}()
	// Nothing changes until the host heartbeats, so the poll must not
	// answer yet.
	select {
	case got := <-done:
		t.Fatalf("poll at the current index answered before anything changed: %+v, %v", got.a, got.err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := api.Heartbeat(ctx, proto.Heartbeat{HostID: "h1", Time: time.Now()}); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	var got answer
	select {
	case got = <-done:
	case <-ctx.Done():
		t.Fatalf("the long-poll did not answer after a placement: %v", ctx.Err())
	}
	if got.err != nil {
		t.Fatalf("long-poll: %v", got.err)
	}
	if got.a.Index <= idx || len(got.a.Assignments) != 1 {
		t.Fatalf("long-poll answer %+v; want index > %d and the one assignment", got.a, idx)
	}
	placed, err := api.Job(ctx, j.ID)
	if err != nil || placed.Placement == nil {
		t.Fatalf("job after the poll answered: %+v, %v; want it placed", placed, err)
	}
	as := got.a.Assignments[0]
	if as.JobID != j.ID || as.Epoch != placed.Placement.Epoch || as.Attempt != 1 || as.GPU != 0 || as.Slot != 0 ||
		len(as.Models) != 1 || as.Models[0].Digest != testDigest("checkpoints/a.safetensors") || as.Spec.Kind() != "workflow" {
		t.Fatalf("assignment %+v does not match the placed job %+v", as, placed.Placement)
	}
}
