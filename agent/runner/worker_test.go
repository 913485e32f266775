package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/proto"
)

func TestWorkerLoadAndResident(t *testing.T) {
	dir := t.TempDir()
	a := writeModel(t, dir, "checkpoints/a.safetensors", 3000)
	b := writeModel(t, dir, "loras/b.safetensors", 2000)
	w := newTestWorker(t, 0)
	ctx := context.Background()

	already, err := w.Load(ctx, []Model{a, b})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(already) != 0 {
		t.Fatalf("first Load: already resident = %v, want none", already)
	}
	res := w.Resident()
	if got := digestsOf(res); len(got) != 2 || !slices.Contains(got, a.Digest) || !slices.Contains(got, b.Digest) {
		t.Fatalf("Resident = %v, want a and b", got)
	}
	for _, r := range res {
		if r.LastUsed.IsZero() || (r.Digest == a.Digest && (r.Name != a.Name || r.Size != a.Size)) {
			t.Fatalf("resident entry %+v is incomplete", r)
		}
	}

	already, err = w.Load(ctx, []Model{b, a})
	if err != nil {
		t.Fatalf("second Load: %v", err)
	}
	if want := []proto.Digest{b.Digest, a.Digest}; !slices.Equal(already, want) {
		t.Fatalf("second Load: already resident = %v, want %v", already, want)
	}
}

func TestWorkerRunIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	a := writeModel(t, dir, "checkpoints/a.safetensors", 4096)
	b := writeModel(t, dir, "vae/b.safetensors", 1024)
	w := newTestWorker(t, 0)
	ctx := context.Background()

	run := func(input string) []byte {
		t.Helper()
		out := t.TempDir()
		var seen []proto.Progress
		res, err := w.Run(ctx, Request{JobID: "j", Kind: "workflow", Input: json.RawMessage(input),
			Models: []Model{a, b}, OutputDir: out}, func(p proto.Progress) { seen = append(seen, p) })
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		if !slices.Equal(res.Outputs, []string{refworker.OutputName}) {
			t.Fatalf("outputs = %q", res.Outputs)
		}
		if len(seen) != 4 || seen[3] != (proto.Progress{Value: 4, Max: 4, Node: "sampler"}) {
			t.Fatalf("progress = %+v, want 4 steps", seen)
		}
		data, err := os.ReadFile(filepath.Join(out, refworker.OutputName))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(bytes.NewReader(data)); err != nil {
			t.Fatalf("output is not a PNG: %v", err)
		}
		return data
	}
	// Run loads what is missing itself: no Load call first.
	first := run(`{"3":{"class_type":"KSampler","inputs":{"seed":1}}}`)
	second := run(`{"3":{"class_type":"KSampler","inputs":{"seed":1}}}`)
	other := run(`{"3":{"class_type":"KSampler","inputs":{"seed":2}}}`)
	if !bytes.Equal(first, second) {
		t.Fatal("the same input gave different images")
	}
	if bytes.Equal(first, other) {
		t.Fatal("different inputs gave the same image")
	}
	var want bytes.Buffer
	fp := refworker.Fingerprint([]byte(`{"3":{"class_type":"KSampler","inputs":{"seed":1}}}`), []proto.Digest{a.Digest, b.Digest})
	if err := png.Encode(&want, refworker.Image(fp)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, want.Bytes()) {
		t.Fatal("the image is not derived from the input and the model digests in order")
	}
}

func TestWorkerRefusesWrongDigest(t *testing.T) {
	dir := t.TempDir()
	good := writeModel(t, dir, "checkpoints/good.safetensors", 500)
	bad := writeModel(t, dir, "checkpoints/bad.safetensors", 500)
	bad.Digest = good.Digest // the catalog says one thing, the file holds another
	bad.Path = writeModel(t, dir, "other", 500).Path
	w := newTestWorker(t, 0)

	_, err := w.Load(context.Background(), []Model{bad})
	if err == nil || !strings.Contains(err.Error(), "has digest") {
		t.Fatalf("Load of a corrupt file: err = %v, want a digest mismatch", err)
	}
	if res := w.Resident(); len(res) != 0 {
		t.Fatalf("Resident after a refused load = %v, want none", digestsOf(res))
	}
	// The worker is fine and loads the right file afterwards.
	if _, err := w.Load(context.Background(), []Model{good}); err != nil {
		t.Fatalf("Load after refusal: %v", err)
	}
}

func TestWorkerCapacityEvictsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	a := writeModel(t, dir, "a", 1000)
	b := writeModel(t, dir, "b", 1000)
	c := writeModel(t, dir, "c", 1000)
	w := newTestWorker(t, 2500)
	ctx := context.Background()

	for _, ms := range [][]Model{{a}, {b}, {a}, {c}} { // a is used again, so b is the LRU
		if _, err := w.Load(ctx, ms); err != nil {
			t.Fatalf("Load %s: %v", ms[0].Name, err)
		}
	}
	if got, want := digestsOf(w.Resident()), []proto.Digest{c.Digest, a.Digest}; !slices.Equal(got, want) {
		t.Fatalf("Resident = %v, want %v (most recent first, b evicted)", got, want)
	}
	// The process itself must have let b go, not just the bookkeeping.
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	m, err := p.call(ctx, time.Second, func(id int64) any {
		return runRequest{ID: id, Op: opRun, Kind: "worker", Models: []proto.Digest{b.Digest}, OutputDir: t.TempDir()}
	}, nil)
	if err != nil || m.ok() || !strings.Contains(m.Error, "not loaded") {
		t.Fatalf("run with evicted b: %+v, %v; want a not-loaded refusal", m, err)
	}

	_, err = w.Load(ctx, []Model{a, b, c})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Load over capacity: err = %v, want ErrTooLarge", err)
	}
}

func TestWorkerRestartsAfterDeath(t *testing.T) {
	dir := t.TempDir()
	a := writeModel(t, dir, "a", 1000)
	w := newTestWorker(t, 0)
	ctx := context.Background()
	if _, err := w.Load(ctx, []Model{a}); err != nil {
		t.Fatal(err)
	}
	pid := w.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to notice the worker's death", func() bool { return w.PID() == 0 })
	if res := w.Resident(); len(res) != 0 {
		t.Fatalf("Resident after death = %v, want none", digestsOf(res))
	}

	already, err := w.Load(ctx, []Model{a})
	if err != nil {
		t.Fatalf("Load after death: %v", err)
	}
	if len(already) != 0 {
		t.Fatalf("a new worker cannot have %v resident", already)
	}
	if w.PID() == pid || w.PID() == 0 {
		t.Fatalf("PID = %d after restart, old %d", w.PID(), pid)
	}
	if _, err := w.Run(ctx, Request{JobID: "j", Kind: "worker", Input: json.RawMessage(`{}`),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil); err != nil {
		t.Fatalf("Run after restart: %v", err)
	}
}

func TestWorkerDeathFailsCallInFlight(t *testing.T) {
	w := newTestWorker(t, 0, "--step-delay=200ms", "--steps=50")
	errc := make(chan error, 1)
	progressed := make(chan struct{}, 1)
	go func() {
		_, err := w.Run(context.Background(), Request{JobID: "j", Kind: "worker", OutputDir: t.TempDir()},
			func(proto.Progress) {
				select {
				case progressed <- struct{}{}:
				default:
				}
			})
		errc <- err
	}()
	select {
	case <-progressed:
	case <-time.After(10 * time.Second):
		t.Fatal("no progress from the run")
	}
	if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-errc
	if !errors.Is(err, ErrWorkerExited) || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Run error = %v, want ErrWorkerExited with the signal", err)
	}
}

func TestWorkerCancelRun(t *testing.T) {
	w := newTestWorker(t, 0, "--step-delay=1s", "--steps=30")
	pid := w.PID()
	out := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := w.Run(ctx, Request{JobID: "j", Kind: "worker", OutputDir: out}, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error = %v, want context.Canceled", err)
	}
	// The full run takes 30 s; answering the cancel takes milliseconds.
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("Run took %s after cancel", d)
	}
	if _, err := os.Stat(filepath.Join(out, refworker.OutputName)); !os.IsNotExist(err) {
		t.Fatalf("a cancelled run left an output (%v)", err)
	}
	if w.PID() != pid {
		t.Fatal("a worker that honoured the cancel was restarted")
	}
}

// muteWorker says hello and then never answers: only the agent's timeouts
// can get it unstuck.
const muteWorker = `printf '{"event":"hello","protocol":1,"name":"mute","pid":%d}\n' $$; exec cat >/dev/null`

func TestWorkerKilledWhenCancelIsIgnored(t *testing.T) {
	w, err := NewWorker(WorkerConfig{Command: []string{"/bin/sh", "-c", muteWorker},
		Logger: testLogger(t), CancelTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	m := Model{Name: "a", Digest: proto.DigestFromSum(make([]byte, 32)), Size: 1, Path: "/dev/null"}
	_, err = w.Load(ctx, []Model{m})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Load error = %v, want the deadline and a kill", err)
	}
	waitFor(t, "the mute worker to die", func() bool { return w.PID() == 0 })
}

func TestWorkerStartFailures(t *testing.T) {
	cases := []struct {
		script, want string
	}{
		{`echo "cannot import torch" >&2; exit 3`, "cannot import torch"},
		{`exec sleep 60`, "no hello within"},
		{`echo '{"event":"hello","protocol":2,"name":"future"}'; exec cat >/dev/null`, "protocol 2"},
	}
	for _, c := range cases {
		_, err := NewWorker(WorkerConfig{Command: []string{"/bin/sh", "-c", c.script},
			Logger: testLogger(t), StartTimeout: 300 * time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "runner: ") {
			t.Errorf("%s: NewWorker error = %v, want one mentioning %q", c.script, err, c.want)
		}
	}
	if _, err := NewWorker(WorkerConfig{}); err == nil {
		t.Error("NewWorker without a command succeeded")
	}
}

func TestWorkerRefusesExecAndClosed(t *testing.T) {
	w := newTestWorker(t, 0)
	ctx := context.Background()
	if _, err := w.Run(ctx, Request{JobID: "j", Kind: "exec", OutputDir: t.TempDir()}, nil); err == nil {
		t.Fatal("a worker ran an exec job")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.Load(ctx, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Load after Close = %v, want ErrClosed", err)
	}
}

func TestBackoffDelay(t *testing.T) {
	cases := map[int]time.Duration{0: 0, 1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		5: 1600 * time.Millisecond, 7: 6400 * time.Millisecond, 8: 10 * time.Second, 100: 10 * time.Second}
	for n, want := range cases {
		if got := backoffDelay(n); got != want {
			t.Errorf("backoffDelay(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestWorkerCloseEndsRun(t *testing.T) {
	w := newTestWorker(t, 0, "--step-delay=1s", "--steps=30")
	errc := make(chan error, 1)
	go func() {
		_, err := w.Run(context.Background(), Request{JobID: "j", Kind: "worker", OutputDir: t.TempDir()}, nil)
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond) // let the run start; either way it must end as closed
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Run error = %v, want ErrClosed", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not end after Close")
	}
}
