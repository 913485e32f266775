package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/internal/comfyuistandin"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

func TestMain(m *testing.M) {
	refworker.ServeIfTestChild()
	comfyuistandin.ServeIfTestChild()
	os.Exit(m.Run())
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// freeAddr reserves a loopback port and releases it for a server to take.
func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startCoordinator starts a one-node coordinator at httpAddr; edit, if
// given, adjusts its config first. The caller closes it.
func startCoordinator(t testing.TB, httpAddr, dataDir string, edit ...func(*coordinator.Config)) *coordinator.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := devcluster.StartCoordinator(ctx, dataDir, func(c *coordinator.Config) {
		c.HTTPAddr = httpAddr
		for _, f := range edit {
			f(c)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func agentConfig(t testing.TB, coordURL, originDir string) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.HostID, cfg.CoordinatorURL = "h-test", coordURL
	cfg.DataDir, cfg.OriginDir = t.TempDir(), originDir
	cfg.SimGPUs = []gpu.SimGPU{{Name: "Simulated H200", MemoryBytes: 141 << 30}}
	cfg.MaxSlotsPerGPU = 1
	cfg.WorkerCommand, cfg.WorkerEnv = []string{os.Args[0]}, []string{refworker.TestChildEnv + "=1"}
	cfg.HeartbeatInterval, cfg.PollWait, cfg.Logger = 100*time.Millisecond, 2*time.Second, quiet
	return cfg
}

// An agent started before any coordinator keeps trying and registers once
// one appears at its address.
func TestAgentWaitsForCoordinator(t *testing.T) {
	addr := freeAddr(t)
	cfg := agentConfig(t, "http://"+addr, t.TempDir())
	type result struct {
		a   *agent.Agent
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, err := agent.New(ctx, cfg)
		done <- result{a, err}
	}()
	time.Sleep(300 * time.Millisecond) // let it fail at least once
	s := startCoordinator(t, addr, t.TempDir())
	defer s.Close()
	r := <-done
	if r.err != nil {
		t.Fatalf("agent did not register once the coordinator came up: %v", r.err)
	}
	defer r.a.Close()
	if h, ok := s.FSM().Host("h-test"); !ok || h.DeviceKind != gpu.KindSimulated || len(h.GPUs) != 1 || h.GPUs[0].Slots != 1 {
		t.Fatalf("registered host = %+v", h)
	}
}

// A coordinator that comes back without the agent's registration (a new
// cluster at the same address) learns it again from the agent's next
// heartbeat, and the agent runs its jobs.
func TestAgentReregistersWithAFreshCoordinator(t *testing.T) {
	addr := freeAddr(t)
	origin := t.TempDir()
	s := startCoordinator(t, addr, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := agent.New(ctx, agentConfig(t, "http://"+addr, origin))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s.Close()

	s = startCoordinator(t, addr, t.TempDir()) // empty state: no hosts, no models
	defer s.Close()
	api := client.New(s.URL(), nil)
	if err := devcluster.SeedModels(ctx, api, origin, nil); err != nil {
		t.Fatal(err)
	}
	j, err := api.SubmitRaw(ctx, []byte(`{"worker":{"models":["vae/sdxl_vae.safetensors"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	j, err = api.WaitJob(ctx, j.ID, 20*time.Millisecond)
	if err != nil || j.State != proto.JobSucceeded || j.Placement.Host != "h-test" {
		t.Fatalf("job on the fresh coordinator = %+v, %v", j, err)
	}
	if _, ok := s.FSM().Host("h-test"); !ok {
		t.Fatal("the agent did not register again")
	}
}

// startWithAgent starts a coordinator and one agent, both stopped when the
// test ends, and returns a context bounding the test and a client.
func startWithAgent(t *testing.T, edit ...func(*agent.Config)) (context.Context, *client.Client) {
	addr := freeAddr(t)
	s := startCoordinator(t, addr, t.TempDir())
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	cfg := agentConfig(t, "http://"+addr, t.TempDir())
	for _, f := range edit {
		f(&cfg)
	}
	a, err := agent.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return ctx, client.New(s.URL(), nil)
}

// Cancelling a running job reaches the agent: the assignment disappears
// from its next long-poll answer and the run's process is killed.
func TestCancelStopsTheRun(t *testing.T) {
	ctx, api := startWithAgent(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	spec := &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 60"}}}
	j, _, err := api.Submit(ctx, spec, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	for pid == 0 {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 1 {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if ctx.Err() != nil {
			t.Fatal("the job never started")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := api.Cancel(ctx, j.ID, "test"); err != nil {
		t.Fatal(err)
	}
	for syscall.Kill(pid, 0) == nil {
		if ctx.Err() != nil {
			t.Fatalf("process %d still runs after the job was cancelled", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, _ := api.Job(ctx, j.ID); got.State != proto.JobCancelled {
		t.Fatalf("job state %s after cancel", got.State)
	}
}

// A job that runs past its timeout_s is stopped by the agent and ends
// timed_out.
func TestRunTimeout(t *testing.T) {
	ctx, api := startWithAgent(t)
	spec := &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"sleep", "60"}}, TimeoutS: 0.5}
	j, _, err := api.Submit(ctx, spec, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	j, err = api.WaitJob(ctx, j.ID, 50*time.Millisecond)
	if err != nil || j.State != proto.JobTimedOut || !strings.Contains(j.Error, "timeout_s=0.5") {
		t.Fatalf("job = %s %q, %v", j.State, j.Error, err)
	}
}

// The agent times its cache disk at start and reports the rate as the disk
// tier's bandwidth, next to the rates it was configured with.
func TestAgentReportsMeasuredDiskBandwidth(t *testing.T) {
	ctx, api := startWithAgent(t, func(c *agent.Config) {
		c.MeasureBandwidth = true
		c.Bandwidth = map[proto.Tier]float64{proto.TierOrigin: 123e6}
	})
	hosts, err := api.Hosts(ctx)
	if err != nil || len(hosts) != 1 {
		t.Fatalf("hosts = %+v, %v", hosts, err)
	}
	bw := hosts[0].Bandwidth
	if bw[proto.TierDisk] <= 0 || bw[proto.TierOrigin] != 123e6 {
		t.Fatalf("registered bandwidths %v; want a measured disk rate and the configured origin rate", bw)
	}
}
