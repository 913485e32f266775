package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/internal/sdnotify"
)

// watchdogUSec is the WatchdogSec the tests pretend the unit has: pings
// come every 100 ms.
const watchdogUSec = "200000"

// notifySocket stands in for systemd's notification socket: a unixgram
// socket whose datagrams arrive, one line each, on the returned channel.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	lines := make(chan string, 4096)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				select {
				case lines <- l:
				default: // a test that stopped reading
				}
			}
		}
	}()
	return path, lines
}

// expectLine reads lines until one starts with want, and fails after a
// minute without it.
func expectLine(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	deadline := time.After(time.Minute)
	for {
		select {
		case l := <-lines:
			if strings.HasPrefix(l, want) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q notification within a minute", want)
		}
	}
}

// startDaemon runs the hearth command as a process with systemd's
// notification environment, and kills it when the test ends.
func startDaemon(t *testing.T, sock string, args ...string) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asHearthEnv+"=1", "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC="+watchdogUSec)
	logf, err := os.Create(filepath.Join(t.TempDir(), "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", args[0], b)
		}
	})
	return cmd, done
}

// stopDaemon sends SIGTERM, expects STOPPING=1 and a clean exit.
func stopDaemon(t *testing.T, cmd *exec.Cmd, done <-chan struct{}, lines <-chan string) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectLine(t, lines, "STOPPING=1")
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 0 {
			t.Fatalf("exit code %d after SIGTERM", code)
		}
	case <-time.After(time.Minute):
		t.Fatal("still running a minute after SIGTERM")
	}
}

func startTestCoordinator(t *testing.T) *coordinator.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := devcluster.StartCoordinator(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCoordinatorNotifiesSystemd(t *testing.T) {
	sock, lines := notifySocket(t)
	cmd, done := startDaemon(t, sock, "coordinator", "--node-id", "c1", "--data-dir", t.TempDir(),
		"--http-addr", loopbackAddr(t, "127.0.0.2"), "--raft-addr", loopbackAddr(t, "127.0.0.2"),
		"--bootstrap", "--raft-fast-timeouts", "--log-level", "warn")
	expectLine(t, lines, "READY=1")
	expectLine(t, lines, "WATCHDOG=1") // a leader known and the API answering
	stopDaemon(t, cmd, done, lines)
}

func TestAgentNotifiesSystemdAndDeregisters(t *testing.T) {
	s := startTestCoordinator(t)
	sock, lines := notifySocket(t)
	cmd, done := startDaemon(t, sock, "agent", "--host-id", "h-notify", "--coordinator", s.URL(),
		"--data-dir", t.TempDir(), "--origin-dir", t.TempDir(), "--http-addr", loopbackAddr(t, "127.0.0.3"),
		"--measure-bandwidth=false", "--scrub-interval", "0", "--max-slots", "1", "--log-level", "warn")
	expectLine(t, lines, "READY=1")
	if _, ok := s.FSM().Host("h-notify"); !ok {
		t.Fatal("READY=1 came before the agent registered")
	}
	expectLine(t, lines, "WATCHDOG=1")
	stopDaemon(t, cmd, done, lines)
	if h, _ := s.FSM().Host("h-notify"); h.DownAt == nil {
		t.Fatalf("host after its agent exited: %+v; want it deregistered (down)", h)
	}
}

// wedgeDevices is a simulated GPU whose readings can be made to hang, as
// an NVML call on a wedged driver does.
type wedgeDevices struct {
	sim     gpu.Devices
	once    sync.Once
	wedged  chan struct{}
	release chan struct{}
}

func (w *wedgeDevices) Devices() ([]gpu.Device, error) {
	select {
	case <-w.wedged:
		<-w.release
	default:
	}
	return w.sim.Devices()
}

func (w *wedgeDevices) Kind() string { return w.sim.Kind() }
func (w *wedgeDevices) Close() error { return w.sim.Close() }

// The agent's watchdog pings go on while only its coordinator is gone (a
// restart would not bring it back, and would kill the jobs it runs), and
// stop once its own heartbeat loop hangs.
func TestAgentWatchdogStopsOnlyWhenTheAgentWedges(t *testing.T) {
	sock, lines := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", watchdogUSec)
	t.Setenv("WATCHDOG_PID", "")
	s := startTestCoordinator(t)
	devs := &wedgeDevices{sim: gpu.NewSimulated([]gpu.SimGPU{{Name: "Simulated H200", MemoryBytes: 141 << 30}}),
		wedged: make(chan struct{}), release: make(chan struct{})}
	cfg := agent.DefaultConfig()
	cfg.HostID, cfg.CoordinatorURL, cfg.Devices = "h-wedge", s.URL(), devs
	cfg.DataDir, cfg.OriginDir, cfg.HTTPAddr = t.TempDir(), t.TempDir(), loopbackAddr(t, "127.0.0.4")
	cfg.MaxSlotsPerGPU, cfg.HeartbeatInterval, cfg.PollWait = 1, 100*time.Millisecond, time.Second
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, err := agent.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	defer close(devs.release) // before Close: the heartbeat loop must be able to end
	wctx, wstop := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { defer close(wdone); sdnotify.Watchdog(wctx, cfg.Logger, a.Healthy) }()
	defer func() { wstop(); <-wdone }()
	expectLine(t, lines, "WATCHDOG=1")

	s.Close()
	for {
		resp, err := http.Get(a.URL() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("readyz still ready with the coordinator gone")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for len(lines) > 0 {
		<-lines
	}
	expectLine(t, lines, "WATCHDOG=1")

	devs.once.Do(func() { close(devs.wedged) })
	expectLine(t, lines, "STATUS=unhealthy")
	if a.Healthy() == nil {
		t.Fatal("the watchdog stopped but Healthy says the agent is fine")
	}
	quiet := time.After(30 * sdnotify.WatchdogInterval())
	for {
		select {
		case l := <-lines:
			if l == "WATCHDOG=1" {
				t.Fatal("a watchdog ping while the heartbeat loop hangs")
			}
		case <-quiet:
			return
		}
	}
}
