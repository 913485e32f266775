package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/internal/miniotest"
	"github.com/hearth-gpu/hearth/proto"
)

// TestModelPushToMinIO pushes a new checkpoint with the CLI into a real
// MinIO, sees it in `model ls`, and runs a workflow that needs it: the agent
// fetches the pushed bytes from the bucket and the job succeeds.
func TestModelPushToMinIO(t *testing.T) {
	srv := miniotest.Start(t)
	t.Setenv("HEARTH_S3_ACCESS_KEY", srv.AccessKey)
	t.Setenv("HEARTH_S3_SECRET_KEY", srv.SecretKey)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{
		DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		WorkerCommand: []string{os.Args[0]}, WorkerEnv: []string{refworker.TestChildEnv + "=1"},
		S3: &cachefs.S3Config{Endpoint: srv.Endpoint, Bucket: "models", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.Coordinator.URL()

	// A new version of the demo checkpoint: same format, other bytes.
	b, err := os.ReadFile(filepath.Join(c.OriginDir, filepath.FromSlash(examples.DemoModels[0].Name)))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	file := filepath.Join(t.TempDir(), "mine.safetensors")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	const name = "checkpoints/mine_v2.safetensors"
	code, out, stderr := runCLI("model", "push", file, "--name", name, "--addr", addr,
		"--s3-endpoint", srv.Endpoint, "--s3-bucket", "models", "--s3-insecure")
	if code != 0 || !strings.Contains(out, "pushed "+name) {
		t.Fatalf("model push: exit %d\nstdout %s\nstderr %s", code, out, stderr)
	}
	if !strings.Contains(stderr, "uploading") || !strings.Contains(stderr, "100%") {
		t.Errorf("model push showed no progress: %q", stderr)
	}
	code, out, _ = runCLI("model", "ls", "--addr", addr)
	if code != 0 || !strings.Contains(out, name) || !strings.Contains(out, humanBytes(int64(len(b)))) {
		t.Fatalf("model ls after push: exit %d: %s", code, out)
	}

	wf := string(examples.Workflows()[1].JSON) // sdxl_txt2img
	wf = strings.Replace(wf, examples.DemoModels[0].Name[len("checkpoints/"):], name[len("checkpoints/"):], 1)
	j, err := c.Client.SubmitRaw(ctx, []byte(`{"workflow":`+wf+`}`))
	if err != nil {
		t.Fatal(err)
	}
	if j, err = c.Client.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if j.State != proto.JobSucceeded {
		t.Fatalf("job with the pushed model ended %s: %s", j.State, j.Error)
	}
	found := false
	for _, m := range j.Models {
		found = found || m.Name == name
	}
	if !found {
		js, _ := json.Marshal(j.Models)
		t.Fatalf("the job did not use the pushed model: %s", js)
	}
}
