package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// waitState polls a job until it reaches want.
func waitState(t *testing.T, ctx context.Context, api *client.Client, id string, want proto.JobState) {
	t.Helper()
	for {
		j, err := api.Job(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State == want {
			return
		}
		if j.State.Terminal() || ctx.Err() != nil {
			t.Fatalf("job %s is %s, want %s", id, j.State, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hearth host drain against a one-host cluster: the job running there
// goes on (--wait gives up while it does, and succeeds once it ended), a
// new job waits in the queue, and --disable lets it run.
func TestHostDrainCommand(t *testing.T) {
	ctx, c := startTestCluster(t, 2*time.Minute)
	addr, api := c.Coordinator.URL(), c.Client
	release := filepath.Join(t.TempDir(), "release")
	hold := &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"sh", "-c", "while [ ! -e " + release + " ]; do sleep 0.02; done"}}}
	running, _, err := api.Submit(ctx, hold, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, ctx, api, running.ID, proto.JobRunning)

	code, out, stderr := runCLI("host", "drain", "host-1", "--addr", addr, "--wait", "--timeout", "300ms")
	if code != 1 || !strings.Contains(out, "host-1 is draining: 1 job left") || !strings.Contains(stderr, "still has 1 job left after 300ms") {
		t.Fatalf("drain --wait with a job running: exit %d, stdout %q, stderr %q; want exit 1 saying a job is left", code, out, stderr)
	}
	if code, out, _ := runCLI("host", "ls", "--addr", addr); code != 0 || !strings.Contains(out, "draining") || !strings.Contains(out, "drain set by an operator") {
		t.Fatalf("host ls while draining: exit %d: %s", code, out)
	}
	queued, _, err := api.Submit(ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCLI("host", "drain", "host-1", "--addr", addr, "--wait", "--timeout", "1m")
	if code != 0 || !strings.Contains(out, "host-1 is drained") {
		t.Fatalf("drain --wait once the job can end: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	if j, _ := api.Job(ctx, running.ID); j.State != proto.JobSucceeded {
		t.Fatalf("the job running at drain ended %s", j.State)
	}
	if j, _ := api.Job(ctx, queued.ID); j.State != proto.JobQueued {
		t.Fatalf("a job submitted to a drained cluster is %s, want queued", j.State)
	}

	if code, out, stderr := runCLI("host", "drain", "--disable", "host-1", "--addr", addr); code != 0 || !strings.Contains(out, "eligible again") {
		t.Fatalf("drain --disable: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	waitState(t, ctx, api, queued.ID, proto.JobSucceeded)
	if code, _, stderr := runCLI("host", "drain", "nope", "--addr", addr); code != 1 || !strings.Contains(stderr, "host_not_found") {
		t.Fatalf("drain of an unknown host: exit %d, stderr %q", code, stderr)
	}
}
