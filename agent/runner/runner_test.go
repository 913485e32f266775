package runner

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/internal/comfyuistandin"
	"github.com/hearth-gpu/hearth/proto"
)

func TestMain(m *testing.M) {
	refworker.ServeIfTestChild()
	comfyuistandin.ServeIfTestChild()
	os.Exit(m.Run())
}

// testLogger logs to the test's output until the test's cleanups reach it;
// it is created before the runner, so it is the last cleanup to run.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// writeModel writes a model file of size bytes, content derived from name,
// and returns it with its real digest.
func writeModel(t *testing.T, dir, name string, size int) Model {
	t.Helper()
	data := make([]byte, 0, size)
	seed := sha256.Sum256([]byte(name))
	for len(data) < size {
		seed = sha256.Sum256(seed[:])
		data = append(data, seed[:min(len(seed), size-len(data))]...)
	}
	path := filepath.Join(dir, strings.ReplaceAll(name, "/", "_"))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return Model{Name: name, Digest: proto.DigestFromSum(sum[:]), Size: int64(size), Path: path}
}

// newTestWorker starts the reference worker with args.
func newTestWorker(t *testing.T, capacity int64, args ...string) *Worker {
	t.Helper()
	w, err := NewWorker(WorkerConfig{
		Command: append([]string{os.Args[0]}, args...),
		// The race detector's default 1 s pause at exit would slow every Close.
		Env:           []string{refworker.TestChildEnv + "=1", "GORACE=atexit_sleep_ms=0"},
		CapacityBytes: capacity,
		Logger:        testLogger(t),
		StartTimeout:  20 * time.Second,
	})
	if err != nil {
		t.Fatalf("NewWorker: %v", err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// waitFor polls cond for up to 10 s; the processes these tests watch end in
// milliseconds, the margin is for loaded CI machines.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// processGone reports whether pid no longer runs (a zombie counts as gone:
// it runs nothing, it only waits to be reaped by whoever adopted it).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
		return true
	}
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return os.IsNotExist(err)
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func digestsOf(rs []ResidentModel) []proto.Digest {
	out := make([]proto.Digest, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Digest)
	}
	return out
}
