package miniotest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestStartServesObjects(t *testing.T) {
	s := Start(t)
	s.MakeBucket(t, "models")
	c := s.Client(t)
	ctx := context.Background()
	want := []byte("weights")
	if _, err := c.PutObject(ctx, "models", "a/b", bytes.NewReader(want), int64(len(want)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	obj, err := c.GetObject(ctx, "models", "a/b", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("GetObject: %v", err)
	}
	defer obj.Close()
	got, err := io.ReadAll(obj)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("GetObject = %q, %v; want %q", got, err, want)
	}
}

func TestServersAreIndependentAndStop(t *testing.T) {
	var endpoint string
	t.Run("first", func(t *testing.T) {
		a, b := Start(t), Start(t)
		if a.Endpoint == b.Endpoint || a.AccessKey == b.AccessKey {
			t.Fatalf("two servers share endpoint or credentials: %+v %+v", a, b)
		}
		endpoint = a.Endpoint
	})
	if endpoint == "" {
		t.Skip("no server started")
	}
	// The subtest's cleanup killed its servers.
	if resp, err := http.Get("http://" + endpoint + "/minio/health/live"); err == nil {
		resp.Body.Close()
		t.Fatalf("MinIO at %s still answers after its test ended", endpoint)
	}
}

func TestBinaryHonoursEnv(t *testing.T) {
	t.Setenv(EnvBinary, os.Args[0])
	if p, err := Binary(); err != nil || p != os.Args[0] {
		t.Fatalf("Binary() = %q, %v; want %q", p, err, os.Args[0])
	}
	t.Setenv(EnvBinary, t.TempDir()+"/absent")
	if _, err := Binary(); err == nil {
		t.Fatalf("Binary() with %s naming a missing file succeeded", EnvBinary)
	}
}
