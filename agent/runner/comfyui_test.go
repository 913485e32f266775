package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/internal/comfyuistandin"
	"github.com/hearth-gpu/hearth/proto"
)

// comfyEnv is a model views directory with its extra_model_paths.yaml, as
// the agent lays them out, and the server's output directory.
type comfyEnv struct {
	views, yaml, output string
}

func newComfyEnv(t *testing.T) comfyEnv {
	t.Helper()
	dir := t.TempDir()
	e := comfyEnv{views: filepath.Join(dir, "models"), yaml: filepath.Join(dir, "extra_model_paths.yaml"), output: filepath.Join(dir, "comfy-out")}
	yaml := fmt.Sprintf("hearth:\n  base_path: %q\n", e.views)
	for _, f := range []string{"checkpoints", "loras", "vae", "upscale_models"} {
		yaml += "  " + f + ": " + f + "/\n"
	}
	if err := os.WriteFile(e.yaml, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// model writes a model of size bytes under its catalog name in the views.
func (e comfyEnv) model(t *testing.T, name string, size int) Model {
	t.Helper()
	data := bytes.Repeat([]byte(name), size/len(name)+1)[:size]
	p := filepath.Join(e.views, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return Model{Name: name, Digest: proto.DigestFromSum(sum[:]), Size: int64(size), Path: p}
}

// startComfy starts a runner that supervises the stand-in as a process
// (this test binary, re-executed), with ComfyUI's flags.
func startComfy(t *testing.T, e comfyEnv, capacity int64, extra ...string) *ComfyUI {
	t.Helper()
	cmd := append([]string{os.Args[0], "--listen", PlaceholderHost, "--port", PlaceholderPort,
		"--extra-model-paths-config", PlaceholderExtraModelPaths, "--output-directory", PlaceholderOutputDir,
		"--cuda-device", PlaceholderGPU}, extra...)
	c, err := NewComfyUI(ComfyUIConfig{
		Command: cmd, Env: []string{comfyuistandin.TestChildEnv + "=1", "GORACE=atexit_sleep_ms=0"},
		GPU: 3, ExtraModelPaths: e.yaml, OutputDir: e.output, CapacityBytes: capacity,
		StartTimeout: 30 * time.Second, CancelTimeout: 5 * time.Second, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewComfyUI: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func workflow(nodes map[string]any) json.RawMessage {
	b, _ := json.Marshal(nodes)
	return b
}

func ckptWorkflow(ckpt string, steps int, outputs map[string]any) json.RawMessage {
	nodes := map[string]any{
		"4": map[string]any{"class_type": "CheckpointLoaderSimple", "inputs": map[string]any{"ckpt_name": ckpt}},
		"3": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"steps": steps, "model": []any{"4", 0}}},
	}
	for k, v := range outputs {
		nodes[k] = v
	}
	return workflow(nodes)
}

var saveImage = map[string]any{"9": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "hearth", "images": []any{"3", 0}}}}

type progressLog struct {
	mu   sync.Mutex
	seen []proto.Progress
}

func (p *progressLog) add(pr proto.Progress) {
	p.mu.Lock()
	p.seen = append(p.seen, pr)
	p.mu.Unlock()
}

func (p *progressLog) get() []proto.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.seen)
}

func TestComfyUIRunProgressAndOutputs(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 3000)
	c := startComfy(t, e, 0, "--steps", "5")
	wf := ckptWorkflow("a.safetensors", 20, map[string]any{
		"9":  map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "hearth", "images": []any{"3", 0}}},
		"10": map[string]any{"class_type": "VHS_VideoCombine", "inputs": map[string]any{"filename_prefix": "clips/walk", "images": []any{"3", 0}}},
		"11": map[string]any{"class_type": "SaveAudio", "inputs": map[string]any{"filename_prefix": "audio/hum", "audio": []any{"3", 0}}},
		"12": map[string]any{"class_type": "SaveVideo", "inputs": map[string]any{"filename_prefix": "video/run", "video": []any{"3", 0}}},
		"13": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"3", 0}}},
	})
	out := t.TempDir()
	var pl progressLog
	res, err := c.Run(context.Background(), Request{JobID: "j1", Kind: "workflow", Input: wf, Models: []Model{a}, OutputDir: out}, pl.add)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []string{"clips/walk_00001_.mp4", "audio/hum_00001_.wav", "video/run_00001_.mp4", "hearth_00001_.png"}
	if !slices.Equal(res.Outputs, want) {
		t.Fatalf("outputs = %q, want %q (every file kind, node order, previews left out)", res.Outputs, want)
	}
	img, err := os.ReadFile(filepath.Join(out, "hearth_00001_.png"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(img)); err != nil {
		t.Fatalf("image output is not a PNG: %v", err)
	}
	for name, magic := range map[string]string{"clips/walk_00001_.mp4": "ftyp", "audio/hum_00001_.wav": "RIFF"} {
		b, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(name)))
		if err != nil || !bytes.Contains(b[:min(len(b), 16)], []byte(magic)) {
			t.Fatalf("output %s: %v, want a file starting with %s", name, err, magic)
		}
	}
	if err := checkOutputs(out, res.Outputs); err != nil {
		t.Fatal(err)
	}
	// The fetched files left the server's output directory.
	if _, err := os.Stat(filepath.Join(e.output, "hearth_00001_.png")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the server's copy of a fetched output is still there (%v)", err)
	}
	got := pl.get()
	if len(got) != 5 || got[4] != (proto.Progress{Value: 5, Max: 5, Node: "3"}) {
		t.Fatalf("progress = %+v, want 5 steps of node 3", got)
	}
	if r := c.Resident(); len(r) != 1 || r[0].Digest != a.Digest || r[0].Size != a.Size || r[0].Name != a.Name {
		t.Fatalf("Resident = %+v, want a", r)
	}
	already, err := c.Load(context.Background(), []Model{a})
	if err != nil || !slices.Equal(already, []proto.Digest{a.Digest}) {
		t.Fatalf("Load after a run: already = %v, %v; want a", already, err)
	}
	// The same workflow again: the server numbers its next image, the
	// runner still returns exactly the new files.
	res, err = c.Run(context.Background(), Request{JobID: "j2", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 2, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if err != nil || !slices.Equal(res.Outputs, []string{"hearth_00001_.png"}) {
		t.Fatalf("second run: %q, %v", res.Outputs, err)
	}
}

func TestComfyUIRefusedAndFailedWorkflows(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 100)
	c := startComfy(t, e, 0)
	pid := c.PID()
	ctx := context.Background()

	_, err := c.Run(ctx, Request{JobID: "j", Kind: "workflow", Input: ckptWorkflow("missing.safetensors", 2, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if !errors.Is(err, ErrJobFailed) || !strings.Contains(err.Error(), "missing.safetensors") || !strings.Contains(err.Error(), "node 4") {
		t.Fatalf("missing model: err = %v, want ErrJobFailed naming node 4 and the file", err)
	}
	fail := ckptWorkflow("a.safetensors", 2, map[string]any{
		"8": map[string]any{"class_type": "StandinFail", "inputs": map[string]any{"message": "CUDA out of memory"}},
		"9": saveImage["9"],
	})
	_, err = c.Run(ctx, Request{JobID: "j", Kind: "workflow", Input: fail, Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if !errors.Is(err, ErrJobFailed) || !strings.Contains(err.Error(), "CUDA out of memory") || !strings.Contains(err.Error(), "StandinFail") {
		t.Fatalf("failing node: err = %v, want ErrJobFailed with the exception", err)
	}
	if _, err := c.Run(ctx, Request{JobID: "j", Kind: "worker", OutputDir: t.TempDir()}, nil); !errors.Is(err, ErrJobFailed) {
		t.Fatalf("worker kind: err = %v, want ErrJobFailed", err)
	}
	if c.PID() != pid {
		t.Fatal("a failed workflow restarted the server")
	}
	if _, err := c.Load(ctx, []Model{{Name: "x", Digest: a.Digest, Size: 10, Path: a.Path}}); err != nil {
		t.Fatal(err)
	}
}

func TestComfyUICancelInterrupts(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 100)
	c := startComfy(t, e, 0, "--step-delay", "500ms", "--steps", "60")
	pid := c.PID()
	ctx, cancel := context.WithCancel(context.Background())
	out := t.TempDir()
	_, err := c.Run(ctx, Request{JobID: "j", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 60, saveImage),
		Models: []Model{a}, OutputDir: out}, func(proto.Progress) { cancel() })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run error = %v, want context.Canceled", err)
	}
	if errors.Is(err, ErrWorkerExited) || c.PID() != pid {
		t.Fatalf("the interrupt was not honoured: err %v, pid %d → %d", err, pid, c.PID())
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Fatalf("a cancelled run left outputs: %v", entries)
	}
	// The server runs the next prompt: the interrupt ended only the first.
	res, err := c.Run(context.Background(), Request{JobID: "j2", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 1, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if err != nil || len(res.Outputs) != 1 {
		t.Fatalf("run after cancel: %v, %v", res.Outputs, err)
	}
}

func TestComfyUICrashRestarts(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 100)
	c := startComfy(t, e, 0, "--step-delay", "300ms", "--steps", "60")
	ctx := context.Background()
	if _, err := c.Run(ctx, Request{JobID: "warm", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 1, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil); err != nil {
		t.Fatal(err)
	}
	pid := c.PID()
	var once sync.Once
	_, err := c.Run(ctx, Request{JobID: "j", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 60, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, func(proto.Progress) {
		once.Do(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	})
	if !errors.Is(err, ErrWorkerExited) || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Run error = %v, want ErrWorkerExited naming the signal", err)
	}
	if r := c.Resident(); len(r) != 0 {
		t.Fatalf("Resident after a crash = %v, want none", digestsOf(r))
	}
	// The next job starts a new server, which loads the model afresh.
	res, err := c.Run(ctx, Request{JobID: "j2", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 1, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if err != nil || len(res.Outputs) != 1 {
		t.Fatalf("run after crash: %v, %v", res.Outputs, err)
	}
	if np := c.PID(); np == 0 || np == pid {
		t.Fatalf("PID after restart = %d, old %d", np, pid)
	}

	// A node that takes the whole server down fails the job the same way.
	crash := ckptWorkflow("a.safetensors", 1, map[string]any{"8": map[string]any{"class_type": "StandinCrash", "inputs": map[string]any{}}, "9": saveImage["9"]})
	if _, err := c.Run(ctx, Request{JobID: "j3", Kind: "workflow", Input: crash, Models: []Model{a}, OutputDir: t.TempDir()}, nil); !errors.Is(err, ErrWorkerExited) {
		t.Fatalf("crashing node: err = %v, want ErrWorkerExited", err)
	}
}

func standinLoaded(t *testing.T, base string) []string {
	t.Helper()
	resp, err := http.Get(base + "/standin/loaded")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}

func TestComfyUIFreesToMakeRoom(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 1000)
	b := e.model(t, "loras/b.safetensors", 1000)
	big := e.model(t, "checkpoints/c.safetensors", 1500)
	c := startComfy(t, e, 2500)
	ctx := context.Background()
	lora := ckptWorkflow("a.safetensors", 1, map[string]any{
		"11": map[string]any{"class_type": "LoraLoader", "inputs": map[string]any{"lora_name": "b.safetensors", "model": []any{"4", 0}}},
		"9":  saveImage["9"],
	})
	if _, err := c.Run(ctx, Request{JobID: "j1", Kind: "workflow", Input: lora, Models: []Model{a, b}, OutputDir: t.TempDir()}, nil); err != nil {
		t.Fatal(err)
	}
	if got := standinLoaded(t, c.URL()); !slices.Equal(got, []string{"checkpoints/a.safetensors", "loras/b.safetensors"}) {
		t.Fatalf("server holds %v after the first job", got)
	}
	// c does not fit beside a and b: the runner frees the server first.
	if _, err := c.Run(ctx, Request{JobID: "j2", Kind: "workflow", Input: ckptWorkflow("c.safetensors", 1, saveImage),
		Models: []Model{big}, OutputDir: t.TempDir()}, nil); err != nil {
		t.Fatal(err)
	}
	if got := digestsOf(c.Resident()); !slices.Equal(got, []proto.Digest{big.Digest}) {
		t.Fatalf("Resident = %v, want only c", got)
	}
	if got := standinLoaded(t, c.URL()); !slices.Equal(got, []string{"checkpoints/c.safetensors"}) {
		t.Fatalf("server holds %v, want only c: /free was not sent or not honoured", got)
	}
	if _, err := c.Load(ctx, []Model{a, b, big}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Load over capacity: %v, want ErrTooLarge", err)
	}
	if err := c.Free(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to free its models", func() bool { return len(standinLoaded(t, c.URL())) == 0 })
	if r := c.Resident(); len(r) != 0 {
		t.Fatalf("Resident after Free = %v", digestsOf(r))
	}
}

func TestComfyUIAttach(t *testing.T) {
	e := newComfyEnv(t)
	a := e.model(t, "checkpoints/a.safetensors", 100)
	srv, err := comfyuistandin.Start(comfyuistandin.Config{ExtraModelPaths: e.yaml, OutputDir: e.output, Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	c, err := NewComfyUI(ComfyUIConfig{URL: srv.URL() + "/", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var pl progressLog
	res, err := c.Run(context.Background(), Request{JobID: "j", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 9, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, pl.add)
	if err != nil || !slices.Equal(res.Outputs, []string{"hearth_00001_.png"}) || len(pl.get()) != 2 {
		t.Fatalf("attached run: %q, progress %v, %v", res.Outputs, pl.get(), err)
	}
	if c.PID() != 0 || len(c.Resident()) != 1 {
		t.Fatalf("attached runner: pid %d, resident %v", c.PID(), c.Resident())
	}
	// Attach mode leaves the server's files alone: it may not own them.
	if _, err := os.Stat(filepath.Join(e.output, "hearth_00001_.png")); err != nil {
		t.Fatalf("attach mode removed the server's output: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = c.Run(context.Background(), Request{JobID: "j2", Kind: "workflow", Input: ckptWorkflow("a.safetensors", 1, saveImage),
		Models: []Model{a}, OutputDir: t.TempDir()}, nil)
	if !errors.Is(err, ErrWorkerExited) {
		t.Fatalf("run against a stopped server: %v, want ErrWorkerExited", err)
	}
	if len(c.Resident()) != 0 {
		t.Fatal("a server that stopped answering still counts as holding models")
	}
}

func TestComfyUIStartFailures(t *testing.T) {
	cases := []struct {
		script, want string
	}{
		{`echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1`, "No module named 'torch'"},
		{`exec sleep 60`, "did not answer"},
	}
	for _, tc := range cases {
		_, err := NewComfyUI(ComfyUIConfig{Command: []string{"/bin/sh", "-c", tc.script}, StartTimeout: 500 * time.Millisecond, Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "runner: ") {
			t.Errorf("%s: err = %v, want one mentioning %q", tc.script, err, tc.want)
		}
	}
	if _, err := NewComfyUI(ComfyUIConfig{}); err == nil {
		t.Error("NewComfyUI without a command or URL succeeded")
	}
	if _, err := NewComfyUI(ComfyUIConfig{URL: "localhost:8188"}); err == nil {
		t.Error("NewComfyUI accepted a URL without a scheme")
	}
}
