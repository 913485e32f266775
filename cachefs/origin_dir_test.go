package cachefs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDirOriginRoundTrip(t *testing.T) {
	root := filepath.Join(t.TempDir(), "origin")
	o, err := NewDirOrigin(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root); err != nil {
		t.Fatalf("NewDirOrigin did not create its root: %v", err)
	}
	b, _ := testBlob(3<<20, 300)
	const key = "checkpoints/sdxl/base.safetensors"
	n, err := o.Put(context.Background(), key, bytes.NewReader(b))
	if err != nil || n != int64(len(b)) {
		t.Fatalf("Put = %d, %v; want %d, nil", n, err, len(b))
	}
	rc, size, err := o.Open(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(b)) || !bytes.Equal(got, b) {
		t.Fatalf("Open returned %d bytes (size %d), err %v; want the %d bytes put", len(got), size, err, len(b))
	}
	if names := dirEntries(t, filepath.Join(root, "checkpoints", "sdxl")); len(names) != 1 {
		t.Fatalf("origin dir holds %v, want only the object (no temp files)", names)
	}

	// Overwrite: readers see the whole new object.
	b2, _ := testBlob(1000, 301)
	if _, err := o.Put(context.Background(), key, bytes.NewReader(b2)); err != nil {
		t.Fatal(err)
	}
	rc, _, _ = o.Open(context.Background(), key)
	got, _ = io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, b2) {
		t.Fatalf("after overwrite Open returned %d bytes, want the new %d", len(got), len(b2))
	}
}

func TestDirOriginNotFound(t *testing.T) {
	o, err := NewDirOrigin(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Open(context.Background(), "nope.safetensors"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing key: err = %v, want ErrNotFound", err)
	}
	if err := os.Mkdir(filepath.Join(o.Root(), "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := o.Open(context.Background(), "dir"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a directory: err = %v, want ErrNotFound", err)
	}
}

func TestDirOriginRejectsEscapingKeys(t *testing.T) {
	parent := t.TempDir()
	o, err := NewDirOrigin(filepath.Join(parent, "origin"))
	if err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(parent, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"../secret", "a/../../secret", "..", "/etc/passwd", secret, "", "a//b", "./a", `a\b`} {
		if rc, _, err := o.Open(context.Background(), key); err == nil {
			rc.Close()
			t.Errorf("Open(%q) succeeded, want it refused", key)
		}
		if _, err := o.Put(context.Background(), key, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) succeeded, want it refused", key)
		}
	}
	// A symbolic link inside the tree may not lead out of it either.
	if err := os.Symlink(secret, filepath.Join(o.Root(), "link")); err != nil {
		t.Fatal(err)
	}
	if rc, _, err := o.Open(context.Background(), "link"); err == nil {
		rc.Close()
		t.Errorf("Open through a symlink out of the root succeeded")
	}
	if got, _ := os.ReadFile(secret); string(got) != "outside" {
		t.Fatalf("a file outside the root was changed: %q", got)
	}
}

func TestDirOriginPutCancelLeavesNoTemp(t *testing.T) {
	o, err := NewDirOrigin(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := testBlob(8<<20, 310)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err = o.Put(ctx, "m/model.bin", &cancelAfter{r: bytes.NewReader(b), after: 2 << 20, cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Put: err = %v, want context.Canceled", err)
	}
	if names := dirEntries(t, filepath.Join(o.Root(), "m")); len(names) != 0 {
		t.Fatalf("cancelled Put left %v", names)
	}
}

func TestDirOriginOpenStopsOnCancel(t *testing.T) {
	b, _ := testBlob(1000, 320)
	o := newTestOrigin(t, "k", b)
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := o.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	cancel()
	if _, err := rc.Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after cancel: err = %v, want context.Canceled", err)
	}
}
