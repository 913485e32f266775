package agent_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/proto"
)

// shutdownRig is a coordinator and one agent with one slot and an HTTP
// server, both stopped when the test ends.
type shutdownRig struct {
	ctx context.Context
	s   *coordinator.Server
	a   *agent.Agent
	api *client.Client
}

func newShutdownRig(t *testing.T, edit func(*agent.Config)) *shutdownRig {
	addr := freeAddr(t)
	s := startCoordinator(t, addr, t.TempDir())
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cfg := agentConfig(t, "http://"+addr, t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	if edit != nil {
		edit(&cfg)
	}
	a, err := agent.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &shutdownRig{ctx: ctx, s: s, a: a, api: client.New(s.URL(), nil)}
}

func (r *shutdownRig) submit(t *testing.T, argv ...string) *proto.Job {
	t.Helper()
	j, _, err := r.api.Submit(r.ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: argv}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// waitJob polls a job until ok accepts it.
func (r *shutdownRig) waitJob(t *testing.T, id, what string, ok func(*proto.Job) bool) *proto.Job {
	t.Helper()
	for {
		j, err := r.api.Job(r.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if ok(j) {
			return j
		}
		if r.ctx.Err() != nil {
			t.Fatalf("job %s is %s (attempts %d); want it %s", id, j.State, j.Attempts, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyz returns the agent's /readyz status and error code.
func readyz(t *testing.T, a *agent.Agent) (int, string) {
	t.Helper()
	resp, err := http.Get(a.URL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  proto.ErrorBody `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, body.Status
	}
	return resp.StatusCode, body.Error.Code
}

// A graceful shutdown lets the running job finish, hands back the one
// queued behind it, takes nothing new, and leaves the host marked down
// the moment it returns.
func TestShutdownLetsRunningJobsFinish(t *testing.T) {
	r := newShutdownRig(t, nil)
	if code, st := readyz(t, r.a); code != http.StatusOK || st != "ready" {
		t.Fatalf("readyz of a registered agent: %d %s", code, st)
	}
	release := filepath.Join(t.TempDir(), "release")
	running := r.submit(t, "sh", "-c", "while [ ! -e "+release+" ]; do sleep 0.02; done")
	r.waitJob(t, running.ID, "running", func(j *proto.Job) bool { return j.State == proto.JobRunning })
	behind := r.submit(t, "true") // the one slot is busy: queued on it behind the first
	r.waitJob(t, behind.ID, "placed on h-test", func(j *proto.Job) bool { return j.Placement != nil })

	done := make(chan error, 1)
	go func() { done <- r.a.Shutdown(context.Background()) }()
	r.waitJob(t, behind.ID, "handed back to the queue", func(j *proto.Job) bool { return j.State == proto.JobQueued })
	if code, st := readyz(t, r.a); code != http.StatusServiceUnavailable || st != "shutting_down" {
		t.Fatalf("readyz while shutting down: %d %s", code, st)
	}
	if h, err := r.api.Host(r.ctx, "h-test"); err != nil || h.Status != proto.HostDraining || h.ActiveJobs != 1 {
		t.Fatalf("host while its agent shuts down: %+v, %v; want draining with 1 job", h, err)
	}
	late := r.submit(t, "true")

	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	case <-r.ctx.Done():
		t.Fatal("shutdown did not return once the running job finished")
	}
	h, ok := r.s.FSM().Host("h-test")
	if !ok || h.DownAt == nil || !strings.Contains(h.DownReason, "left") {
		t.Fatalf("host right after shutdown: %+v; want marked down as left", h)
	}
	if j, _ := r.api.Job(r.ctx, running.ID); j.State != proto.JobSucceeded {
		t.Fatalf("the job running at shutdown ended %s (%s)", j.State, j.Error)
	}
	for _, id := range []string{behind.ID, late.ID} {
		if j, _ := r.api.Job(r.ctx, id); j.State != proto.JobQueued {
			t.Fatalf("job %s is %s after the only host left; want queued", id, j.State)
		}
	}
	if j, _ := r.api.Job(r.ctx, late.ID); j.Attempts != 0 {
		t.Fatalf("a job submitted during shutdown was placed %d times; want never", j.Attempts)
	}
}

// When the wait is cut short (a second signal), the running job is
// cancelled, its process killed, and the coordinator requeues it at once.
func TestShutdownCutShortRequeues(t *testing.T) {
	r := newShutdownRig(t, nil)
	pidFile := filepath.Join(t.TempDir(), "pid")
	j := r.submit(t, "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 60")
	var pid int
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 1 {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if r.ctx.Err() != nil {
			t.Fatal("the job never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.a.Shutdown(ctx) }()
	for code, _ := readyz(t, r.a); code == http.StatusOK; code, _ = readyz(t, r.a) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatalf("process %d still runs after the agent shut down", pid)
	}
	got, _ := r.api.Job(r.ctx, j.ID)
	if got.State != proto.JobQueued || got.Attempts != 1 || !strings.Contains(got.History[len(got.History)-1].Error, "left") {
		t.Fatalf("cancelled job after shutdown: %s, attempts %d, history %+v; want requeued because the host left", got.State, got.Attempts, got.History)
	}
}

// /readyz says why the agent is not ready once its coordinator stops
// answering, and ready again when it is back.
func TestReadyzFollowsTheCoordinator(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	s := startCoordinator(t, addr, dir)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := agentConfig(t, "http://"+addr, t.TempDir())
	cfg.HTTPAddr = "127.0.0.1:0"
	a, err := agent.New(ctx, cfg)
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	defer a.Close()
	s.Close()
	for code, st := readyz(t, a); st != "coordinator_unreachable"; code, st = readyz(t, a) {
		if ctx.Err() != nil {
			t.Fatalf("readyz with the coordinator gone: %d %s", code, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.Healthy(); err != nil {
		t.Fatalf("an agent whose coordinator is gone should still be healthy (a restart would not help): %v", err)
	}
	s = startCoordinator(t, addr, dir)
	defer s.Close()
	for code, st := readyz(t, a); code != http.StatusOK; code, st = readyz(t, a) {
		if ctx.Err() != nil {
			t.Fatalf("readyz with the coordinator back: %d %s", code, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
