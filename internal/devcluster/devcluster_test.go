package devcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/proto"
)

// TestMain lets the test binary serve as the reference worker the agent
// starts per slot: the agent re-executes this binary with
// refworker.TestChildEnv set.
func TestMain(m *testing.M) {
	refworker.ServeIfTestChild()
	os.Exit(m.Run())
}

// startCluster starts a cluster whose worker is this test binary; edit, if
// given, changes the options first.
func startCluster(t *testing.T, edit ...func(*Options)) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := Options{
		DataDir:       t.TempDir(),
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		WorkerCommand: []string{os.Args[0], "--step-delay=20ms"},
		WorkerEnv:     []string{refworker.TestChildEnv + "=1"},
	}
	for _, f := range edit {
		f(&o)
	}
	c, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitStates polls a job until it ends and returns the distinct states seen.
func waitStates(t *testing.T, c *Cluster, id string) (*proto.Job, []proto.JobState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var seen []proto.JobState
	for {
		j, err := c.Client.Job(ctx, id)
		if err != nil {
			t.Fatalf("get job %s: %v", id, err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != j.State {
			seen = append(seen, j.State)
		}
		if j.State.Terminal() {
			return j, seen
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var order = []proto.JobState{proto.JobQueued, proto.JobPlaced, proto.JobFetching, proto.JobLoading, proto.JobRunning, proto.JobUploading, proto.JobSucceeded}

func TestWorkflowRunsColdThenWarm(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	wf := examples.Workflows()[1] // sdxl_txt2img: checkpoint + vae
	if wf.Name != "sdxl_txt2img" {
		t.Fatalf("example order changed: %s", wf.Name)
	}
	body := []byte(`{"workflow":` + string(wf.JSON) + `}`)

	submitted, err := c.Client.SubmitRaw(ctx, body)
	if err != nil {
		t.Fatal(err)
	}
	if submitted.State != proto.JobQueued || len(submitted.Models) != 2 {
		t.Fatalf("accepted job = state %s models %+v", submitted.State, submitted.Models)
	}
	cold, seen := waitStates(t, c, submitted.ID)
	if cold.State != proto.JobSucceeded {
		t.Fatalf("cold job ended %s: %s", cold.State, cold.Error)
	}
	// Polling may miss fast states, but what it saw must follow the path.
	last := -1
	for _, s := range seen {
		i := slices.Index(order, s)
		if i <= last {
			t.Fatalf("states seen out of order: %v", seen)
		}
		last = i
	}
	p := cold.Placement
	if p == nil || p.Host != "host-1" || p.Epoch == 0 || len(p.Models) != 2 || cold.Attempts != 1 {
		t.Fatalf("cold placement = %+v (attempts %d)", p, cold.Attempts)
	}
	for _, m := range p.Models {
		if m.Tier != proto.TierOrigin || m.Seconds <= 0 {
			t.Fatalf("cold model %s placed from tier %s (%.3fs), want origin with a positive estimate", m.Name, m.Tier, m.Seconds)
		}
	}
	if cold.StartedAt == nil || cold.FinishedAt == nil || cold.LoadS <= 0 || cold.RunS <= 0 || p.EstimateS <= 0 {
		t.Fatalf("cold timings missing: started %v finished %v load %.3f run %.3f estimate %.3f", cold.StartedAt, cold.FinishedAt, cold.LoadS, cold.RunS, p.EstimateS)
	}
	checkOutputs(t, cold)

	warm, _ := waitStates(t, c, mustSubmit(t, c, body))
	if warm.State != proto.JobSucceeded {
		t.Fatalf("warm job ended %s: %s", warm.State, warm.Error)
	}
	wp := warm.Placement
	if wp.Host != p.Host || wp.GPU != p.GPU || wp.Slot != p.Slot {
		t.Fatalf("warm job went to %s/%d/%d, not the slot holding its models %s/%d/%d", wp.Host, wp.GPU, wp.Slot, p.Host, p.GPU, p.Slot)
	}
	for _, m := range wp.Models {
		if m.Tier != proto.TierVRAM {
			t.Fatalf("warm model %s placed from tier %s, want vram", m.Name, m.Tier)
		}
	}
	if wp.EstimateS != 0 {
		t.Fatalf("warm estimate %.3f, want 0", wp.EstimateS)
	}
	checkOutputs(t, warm)
	// The reference worker's output is a pure function of input and models.
	if cold.Outputs[0].Digest != warm.Outputs[0].Digest {
		t.Fatalf("same workflow, same models, different outputs: %s vs %s", cold.Outputs[0].Digest, warm.Outputs[0].Digest)
	}

	// The host view reports the residency that made it warm.
	hosts, err := c.Client.Hosts(ctx)
	if err != nil || len(hosts) != 1 || hosts[0].Status != proto.HostReady || hosts[0].DeviceKind != "simulated" {
		t.Fatalf("hosts = %+v, %v", hosts, err)
	}
	resident := 0
	for _, s := range hosts[0].Slots {
		resident += len(s.Resident)
	}
	if resident < 2 || len(hosts[0].Cache) < 2 {
		t.Fatalf("host reports %d resident models and %d cached blobs, want at least 2 of each", resident, len(hosts[0].Cache))
	}
	l, err := c.Client.Jobs(ctx, url.Values{"state": {"succeeded"}})
	if err != nil || len(l.Jobs) != 2 {
		t.Fatalf("succeeded jobs = %d, %v", len(l.Jobs), err)
	}
}

func TestWorkerAndExecJobs(t *testing.T) {
	c := startCluster(t)
	worker := mustSubmit(t, c, []byte(`{"worker":{"models":["loras/pixel_art_xl.safetensors"],"input":{"prompt":"x"}}}`))
	exec := mustSubmit(t, c, []byte(`{"exec":{"command":["/bin/sh","-c","cat \"$HEARTH_MODELS\" >/dev/null; printf '%s' \"$HEARTH_JOB_ID\" > \"$HEARTH_OUTPUT_DIR/id.txt\""]}}`))
	for _, id := range []string{worker, exec} {
		j, _ := waitStates(t, c, id)
		if j.State != proto.JobSucceeded {
			t.Fatalf("job %s (%s) ended %s: %s", id, j.Spec.Kind(), j.State, j.Error)
		}
		checkOutputs(t, j)
	}
	j, _ := c.Client.Job(context.Background(), exec)
	b, err := os.ReadFile(strings.TrimPrefix(j.Outputs[0].URL, "file://"))
	if err != nil || string(b) != exec {
		t.Fatalf("exec output = %q, %v; want the job id %q", b, err, exec)
	}
}

// A catalog entry whose digest does not match the origin's bytes must fail
// the job with a clear error and leave nothing in the cache.
func TestCorruptOriginFailsJob(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	m := examples.DemoModels[3]
	sum := sha256.Sum256([]byte("not the bytes"))
	if _, err := c.Client.PutModel(ctx, proto.Model{Name: "upscale_models/bad.pth", Digest: proto.DigestFromSum(sum[:]), Size: m.Size, Origin: m.Name}); err != nil {
		t.Fatal(err)
	}
	id := mustSubmit(t, c, []byte(`{"worker":{"models":["upscale_models/bad.pth"]}}`))
	j, _ := waitStates(t, c, id)
	if j.State != proto.JobFailed || !strings.Contains(j.Error, "digest") {
		t.Fatalf("job ended %s with error %q; want failed naming the digest mismatch", j.State, j.Error)
	}
	for _, b := range c.Agent.Heartbeat().Cache {
		if b.Digest == proto.DigestFromSum(sum[:]) {
			t.Fatal("a blob that failed verification is in the cache")
		}
	}
}

func mustSubmit(t *testing.T, c *Cluster, body []byte) string {
	t.Helper()
	j, err := c.Client.SubmitRaw(context.Background(), body)
	if err != nil {
		t.Fatal(err)
	}
	return j.ID
}

// checkOutputs verifies every output exists and matches its digest and size.
func checkOutputs(t *testing.T, j *proto.Job) {
	t.Helper()
	if len(j.Outputs) == 0 {
		t.Fatalf("job %s has no outputs", j.ID)
	}
	for _, o := range j.Outputs {
		b, err := os.ReadFile(strings.TrimPrefix(o.URL, "file://"))
		if err != nil {
			t.Fatalf("output %s: %v", o.Name, err)
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != o.Size || "sha256:"+hex.EncodeToString(sum[:]) != string(o.Digest) {
			t.Fatalf("output %s: %d bytes digest %x; job says %d bytes %s", o.Name, len(b), sum, o.Size, o.Digest)
		}
	}
}
