package devcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/internal/miniotest"
	"github.com/hearth-gpu/hearth/proto"
)

// TestWorkflowFromS3Origin runs the demo's job against a real MinIO: the
// models are uploaded to a bucket and the agent fetches them from there
// (digest-verified), the outputs land in a results bucket and come back as
// presigned URLs anyone can GET, the models used are promoted to the RAM
// tier and the host reports them in it, and the agent's metrics count the
// disk tier's misses and bytes fetched.
func TestWorkflowFromS3Origin(t *testing.T) {
	srv := miniotest.Start(t)
	origin := &cachefs.S3Config{
		Endpoint: srv.Endpoint, Bucket: "models", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey,
		PartSize: 1 << 20, // several ranges even for the small demo models
	}
	results := *origin
	results.Bucket = "results"

	c := startCluster(t, func(o *Options) {
		o.S3, o.Results = origin, &results
		o.Agent = func(ac *agent.Config) {
			ac.HTTPAddr = "127.0.0.1:0"
			ac.RAMMaxBytes = 1 << 30
		}
	})
	ctx := context.Background()
	// Nothing may come from the local files: the agent knows only S3.
	if err := os.RemoveAll(c.OriginDir); err != nil {
		t.Fatal(err)
	}

	wf := examples.Workflows()[1] // sdxl_txt2img: checkpoint + vae
	j, _ := waitStates(t, c, mustSubmit(t, c, []byte(`{"workflow":`+string(wf.JSON)+`}`)))
	if j.State != proto.JobSucceeded {
		t.Fatalf("job ended %s: %s", j.State, j.Error)
	}
	for _, m := range j.Placement.Models {
		if m.Tier != proto.TierOrigin {
			t.Fatalf("model %s placed from %s, want origin", m.Name, m.Tier)
		}
	}
	if len(j.Outputs) == 0 {
		t.Fatal("no outputs")
	}
	for _, o := range j.Outputs {
		if !strings.HasPrefix(o.URL, "http://"+srv.Endpoint+"/results/") || !strings.Contains(o.URL, "X-Amz-Signature=") {
			t.Fatalf("output %s URL %q is not a presigned URL into the results bucket", o.Name, o.URL)
		}
		resp, err := http.Get(o.URL) // no credentials: the signature is the permission
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET output %s: %d %v", o.Name, resp.StatusCode, err)
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != o.Size || "sha256:"+hex.EncodeToString(sum[:]) != string(o.Digest) {
			t.Fatalf("output %s: %d bytes %x; job says %d bytes %s", o.Name, len(b), sum, o.Size, o.Digest)
		}
	}

	// The models the job used move into the RAM tier and the host says so.
	deadline := time.Now().Add(30 * time.Second)
	for {
		hosts, err := c.Client.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		inRAM := 0
		for _, b := range hosts[0].Cache {
			if b.Tier == proto.TierRAM {
				inRAM++
			}
		}
		if inRAM == len(j.Models) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host reports cache %+v; want the job's %d models in the ram tier", hosts[0].Cache, len(j.Models))
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The models are named in the agent's view tree, for ComfyUI.
	views := filepath.Join(c.opts.DataDir, "agent", "models")
	for _, m := range j.Models {
		fi, err := os.Stat(filepath.Join(views, filepath.FromSlash(m.Name)))
		if err != nil || fi.Size() != m.Size {
			t.Fatalf("view of %s: %v (size %v, want %d)", m.Name, err, fi, m.Size)
		}
	}
	if y, err := os.ReadFile(filepath.Join(c.opts.DataDir, "agent", "extra_model_paths.yaml")); err != nil || !strings.Contains(string(y), views) {
		t.Fatalf("extra_model_paths.yaml = %q, %v; want it to point at %s", y, err, views)
	}

	metrics := get(t, c.Agent.URL()+"/metrics")
	for _, want := range []string{
		`hearth_cache_misses_total{tier="disk"} 2`,
		`hearth_cache_fetch_seconds_count{source="origin",tier="disk"} 2`,
		`hearth_cache_used_bytes{tier="ram"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("agent metrics lack %s", want)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestMissingObjectFailsOnlyItsJob registers a model whose object the
// origin does not have: its job fails with a message that names the key,
// and a job that needs other models runs on.
func TestMissingObjectFailsOnlyItsJob(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	if _, err := c.Client.PutModel(ctx, proto.Model{Name: "loras/gone.safetensors", Size: 1234,
		Digest: proto.Digest("sha256:" + strings.Repeat("ab", 32)), Origin: "loras/gone.safetensors"}); err != nil {
		t.Fatal(err)
	}
	bad := mustSubmit(t, c, []byte(`{"worker":{"models":["loras/gone.safetensors"],"input":{}}}`))
	good := mustSubmit(t, c, []byte(`{"worker":{"models":["loras/pixel_art_xl.safetensors"],"input":{}}}`))
	if j, _ := waitStates(t, c, bad); j.State != proto.JobFailed || !strings.Contains(j.Error, "loras/gone.safetensors") || !strings.Contains(j.Error, "not found") {
		t.Fatalf("job with a missing object ended %s: %q; want failed, naming the key", j.State, j.Error)
	}
	if j, _ := waitStates(t, c, good); j.State != proto.JobSucceeded {
		t.Fatalf("the other job ended %s: %s", j.State, j.Error)
	}
}
