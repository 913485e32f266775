package agent_test

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

// The Python GPU worker (workers/python), with its fake backend standing
// in for torch and CUDA, runs worker jobs through the real agent: the model
// is fetched into the cache, loaded by the worker, and a repeat finds it
// resident (the vram tier) and skips the load.
func TestPythonWorkerRunsJobsThroughTheAgent(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("HEARTH_REQUIRE_PYTHON") == "1" {
			t.Fatal("python3 is not installed, and HEARTH_REQUIRE_PYTHON=1")
		}
		t.Skip("python3 is not installed")
	}
	script, err := filepath.Abs("../workers/python/hearth_worker.py")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{
		DataDir: t.TempDir(), Logger: quiet, Slots: 1,
		WorkerCommand: []string{py, script, "--backend", "fake", "--verify", "size"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	type result struct {
		Checksum any `json:"checksum"`
		Timings  struct {
			Cold bool `json:"cold"`
		} `json:"timings"`
	}
	run := func() (*proto.Job, result) {
		t.Helper()
		body := `{"worker": {"models": ["checkpoints/sd_xl_base_1.0.safetensors"], "input": {"seed": 7}}}`
		j, err := c.Client.SubmitRaw(ctx, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if j, err = c.Client.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil || j.State != proto.JobSucceeded {
			t.Fatalf("job: %+v, %v", j, err)
		}
		if len(j.Outputs) != 1 || j.Outputs[0].Name != "hearth_result.json" {
			t.Fatalf("outputs %+v, want hearth_result.json", j.Outputs)
		}
		u, err := url.Parse(j.Outputs[0].URL)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(u.Path)
		if err != nil {
			t.Fatal(err)
		}
		var r result
		if err := json.Unmarshal(b, &r); err != nil || r.Checksum == nil {
			t.Fatalf("result %s: %v", b, err)
		}
		return j, r
	}
	first, r1 := run()
	second, r2 := run()
	if !r1.Timings.Cold || r2.Timings.Cold {
		t.Errorf("cold flags: first %v, repeat %v; want the repeat warm", r1.Timings.Cold, r2.Timings.Cold)
	}
	if r1.Checksum != r2.Checksum {
		t.Errorf("checksums differ for the same seed and weights: %v vs %v", r1.Checksum, r2.Checksum)
	}
	if m := second.Placement.Models; len(m) != 1 || m[0].Tier != proto.TierVRAM {
		t.Errorf("repeat placed with %+v, want the model in vram", m)
	}
	if first.Placement.Models[0].Tier == proto.TierVRAM {
		t.Errorf("first run placed with the model already in vram")
	}
}
