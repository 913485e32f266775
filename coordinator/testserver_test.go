package coordinator

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// newTestServer starts a real single-voter coordinator on free loopback
// ports with Raft on disk in a temp dir, and closes it when the test ends.
// edit may change the config before start.
func newTestServer(t testing.TB, edit func(*Config)) (*Server, *client.Client) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.HTTPAddr, cfg.RaftAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Bootstrap = true
	cfg.RaftFastTimeouts = true
	cfg.RaftLogLevel = "error"
	cfg.SchedulerInterval = 50 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if edit != nil {
		edit(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("start coordinator: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	return s, client.New(s.URL(), nil)
}

// testDigest returns a valid digest derived from s.
func testDigest(s string) proto.Digest {
	sum := sha256.Sum256([]byte(s))
	return proto.DigestFromSum(sum[:])
}

// putTestModel registers a catalog entry through the API.
func putTestModel(t testing.TB, api *client.Client, name string, size int64) proto.Model {
	t.Helper()
	m, err := api.PutModel(context.Background(), proto.Model{Name: name, Digest: testDigest(name), Size: size})
	if err != nil {
		t.Fatalf("put model %s: %v", name, err)
	}
	return *m
}

// workflowWith returns a minimal ComfyUI workflow that loads ckpt.
func workflowWith(ckpt string) []byte {
	return []byte(`{"workflow":{"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"` + ckpt + `"}},` +
		`"9":{"class_type":"SaveImage","inputs":{"images":["4",0],"filename_prefix":"t"}}}}`)
}
