package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

// TestMain lets the test binary act as the reference worker for the agent,
// and as the hearth command for the multi-process cluster tests.
func TestMain(m *testing.M) {
	refworker.ServeIfTestChild()
	serveIfHearthChild()
	os.Exit(m.Run())
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExitTwoWithASentence(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "Usage"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"coordinator"}, "needs --data-dir"},
		{[]string{"coordinator", "--data-dir", "x", "--max-body", "lots"}, "--max-body"},
		{[]string{"agent", "--data-dir", "x"}, "needs --data-dir, and --origin-dir or --s3-endpoint"},
		{[]string{"agent", "--data-dir", "x", "--s3-endpoint", "127.0.0.1:9"}, "needs credentials"},
		{[]string{"agent", "--data-dir", "x", "--origin-dir", "y", "--results-bucket", "r"}, "--results-bucket needs --s3-endpoint"},
		{[]string{"model", "push"}, "exactly one FILE"},
		{[]string{"model", "push", "f", "--name", "../x.safetensors"}, "must not contain"},
		{[]string{"model", "push", "f", "--name", "/abs.safetensors"}, "relative path"},
		{[]string{"model", "push", "f", "--name", "loras/x.safetensors"}, "needs an origin"},
		{[]string{"model", "push", "/does/not/exist", "--name", "loras/x.safetensors", "--origin-dir", "o"}, "cannot read"},
		{[]string{"agent", "--data-dir", "x", "--origin-dir", "y", "--sim-gpus", "nosize"}, "NAME:SIZE"},
		{[]string{"agent", "--data-dir", "x", "--origin-dir", "y", "--slot-size", "-3GiB"}, "--slot-size"},
		{[]string{"agent", "--data-dir", "x", "--origin-dir", "y", "--runner", "tgi"}, `--runner "tgi" must be worker or comfyui`},
		{[]string{"agent", "--data-dir", "x", "--origin-dir", "y", "--comfyui-url", "http://127.0.0.1:8188"}, "need --runner comfyui"},
		{[]string{"demo", "--runner", "tgi"}, `--runner "tgi" must be worker or comfyui`},
		{[]string{"job"}, "submit, get, ls, cancel, retry or watch"},
		{[]string{"job", "submit"}, "needs one FILE"},
		{[]string{"job", "submit", "/does/not/exist.json"}, "cannot read"},
		{[]string{"job", "explode"}, `unknown job subcommand "explode"`},
		{[]string{"job", "ls", "--no-such-flag"}, "flag provided but not defined"},
		{[]string{"model"}, "model needs a subcommand"},
		{[]string{"host", "rm"}, "host needs a subcommand"},
		{[]string{"host", "drain"}, "needs one host ID"},
		{[]string{"host", "drain", "a", "b"}, "needs one host ID"},
		{[]string{"host", "drain", "--disable", "--wait", "h1"}, "nothing to --wait for"},
		{[]string{"host", "drain", "h1", "--timeout", "soon"}, "invalid value"},
		{[]string{"host", "drain", "h1", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"dev", "extra"}, "takes no arguments"},
		{[]string{"coordinator", "--data-dir", "x", "--log-level", "loud"}, "log level"},
		{[]string{"sim", "--hosts", "0"}, "not a fleet size"},
		{[]string{"sim", "--policies", "hearth,magic"}, `unknown policy "magic"`},
		{[]string{"sim", "--scenarios", "weekend"}, "no scenario matches"},
		{[]string{"sim", "--duration", "-5"}, "--duration must be a positive number"},
		{[]string{"sim", "--trace", "/does/not/exist.jsonl"}, "--trace"},
		{[]string{"bench", "nap"}, "submit or heartbeat"},
	}
	for _, tc := range cases {
		code, _, stderr := runCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("hearth %q: exit %d, stderr %q; want exit 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]uint64{"512": 512, "16MiB": 16 << 20, "24GiB": 24 << 30, "1.5GB": 1.5e9, "2 GiB": 2 << 30, "0": 0} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1", "1XB", "99999999TiB"} {
		if _, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) accepted a bad size", bad)
		}
	}
}

func TestReadSpecFileWrapsBarePrompts(t *testing.T) {
	dir := t.TempDir()
	bare := filepath.Join(dir, "bare.json")
	os.WriteFile(bare, examples.Workflows()[0].JSON, 0o600)
	spec := filepath.Join(dir, "spec.json")
	os.WriteFile(spec, []byte(`{"worker":{"models":[]},"priority":3}`), 0o600)
	b, err := readSpecFile(bare)
	var got map[string]json.RawMessage
	if err != nil || json.Unmarshal(b, &got) != nil || len(got) != 1 || got["workflow"] == nil {
		t.Fatalf("bare prompt not wrapped as {workflow}: %s, %v", b, err)
	}
	if b, err := readSpecFile(spec); err != nil || !strings.Contains(string(b), `"priority":3`) {
		t.Fatalf("a full spec was altered: %s, %v", b, err)
	}
}

// startTestCluster starts an in-process cluster whose agent runs this test
// binary as the reference worker, stopped when the test ends, and returns
// a context bounding the test by d.
func startTestCluster(t *testing.T, d time.Duration) (context.Context, *devcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	c, err := devcluster.Start(ctx, devcluster.Options{
		DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		WorkerCommand: []string{os.Args[0]}, WorkerEnv: []string{refworker.TestChildEnv + "=1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ctx, c
}

func TestClientCommandsAgainstACluster(t *testing.T) {
	_, c := startTestCluster(t, time.Minute)
	addr := c.Coordinator.URL()
	file := filepath.Join(t.TempDir(), "upscale.json")
	for _, wf := range examples.Workflows() {
		if wf.Name == "upscale" {
			os.WriteFile(file, wf.JSON, 0o600)
		}
	}

	code, out, stderr := runCLI("job", "submit", file, "--wait", "--addr", addr)
	var j proto.Job
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.State != proto.JobSucceeded {
		t.Fatalf("job submit --wait: exit %d, job %+v, stderr %s", code, j, stderr)
	}
	if code, out, _ := runCLI("job", "get", j.ID, "--addr", addr); code != 0 || !strings.Contains(out, `"estimate_s"`) {
		t.Fatalf("job get: exit %d: %s", code, out)
	}
	if code, out, _ := runCLI("job", "ls", "--addr", addr); code != 0 || !strings.Contains(out, j.ID) || !strings.Contains(out, "4x_ultrasharp.pth=origin") {
		t.Fatalf("job ls: exit %d: %s", code, out)
	}
	if code, out, _ := runCLI("host", "ls", "--addr", addr); code != 0 || !strings.Contains(out, "host-1") || !strings.Contains(out, "ready") || !strings.Contains(out, "simulated") {
		t.Fatalf("host ls: exit %d: %s", code, out)
	}
	if code, out, _ := runCLI("model", "ls", "--addr", addr); code != 0 || strings.Count(out, "\n") != 1+len(examples.DemoModels) || !strings.Contains(out, "host-1:") {
		t.Fatalf("model ls: exit %d: %s", code, out)
	}
	// A server-side refusal is exit 1 with the API's message, not a usage error.
	if code, _, stderr := runCLI("job", "get", "nope", "--addr", addr); code != 1 || !strings.Contains(stderr, "job_not_found") {
		t.Fatalf("job get nope: exit %d, stderr %q", code, stderr)
	}
}

// TestDemoRunsWithEitherRunner runs `hearth demo` as a process, once with
// the reference worker and once with the comfyui runner against stand-in
// ComfyUI servers that the agent starts and supervises: every workflow
// must succeed with outputs, and every repeat find its models in vram.
func TestDemoRunsWithEitherRunner(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and its workers as processes")
	}
	for _, r := range []string{"worker", "comfyui"} {
		t.Run(r, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "demo", "--runner", r)
			cmd.Env = append(os.Environ(), asHearthEnv+"=1")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("hearth demo --runner %s: %v\n%s", r, err, out)
			}
			for _, want := range []string{"every repeated workflow found its models resident in vram", "6 jobs in"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("demo output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}
