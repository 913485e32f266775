package cachefs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestViewsLinkReadSwap(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, filepath.Join(dir, "cache"), 0, nil)
	v, err := NewViews(filepath.Join(dir, "views"), s)
	if err != nil {
		t.Fatal(err)
	}
	b1, d1 := testBlob(1000, 1)
	b2, d2 := testBlob(2000, 2)
	mustPut(t, s, b1, d1)
	mustPut(t, s, b2, d2)

	const name = "checkpoints/sd_xl_base_1.0.safetensors"
	if err := v.Link(name, d1); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(v.Root(), "checkpoints", "sd_xl_base_1.0.safetensors")
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, b1) {
		t.Fatalf("view reads %d bytes (err %v), want the first blob", len(got), err)
	}
	// A new version replaces the link while readers keep reading.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readErr error
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			got, err := os.ReadFile(p)
			if err != nil || !(bytes.Equal(got, b1) || bytes.Equal(got, b2)) {
				readErr = errors.Join(err, errors.New("a reader saw neither version"))
				return
			}
		}
	})
	for range 50 {
		if err := v.Link(name, d2); err != nil {
			t.Fatal(err)
		}
		if err := v.Link(name, d1); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Link(name, d2); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	if got, _ := os.ReadFile(p); !bytes.Equal(got, b2) {
		t.Fatal("after the swap the view does not read the new version")
	}
	names, err := v.List()
	if err != nil || len(names) != 1 || names[name] != d2 {
		t.Fatalf("List = %v, %v; want only %s -> %s", names, err, name, d2.Short())
	}
	if err := v.Unlink(name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Fatalf("unlinked name still there: %v", err)
	}
}

func TestViewsRejectBadNamesAndUncachedBlobs(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, filepath.Join(dir, "cache"), 0, nil)
	v, err := NewViews(filepath.Join(dir, "views"), s)
	if err != nil {
		t.Fatal(err)
	}
	b, d := testBlob(100, 3)
	for _, name := range []string{"../escape.safetensors", "/etc/passwd", "loras/../../x", "loras//x", "", "loras/" + viewTmpPrefix + "x"} {
		if err := v.Link(name, d); err == nil {
			t.Errorf("Link(%q) succeeded; want it refused", name)
		}
	}
	if err := v.Link("loras/x.safetensors", d); !errors.Is(err, ErrNotCached) {
		t.Fatalf("linking an uncached blob: %v, want ErrNotCached", err)
	}
	mustPut(t, s, b, d)
	// A file the cache did not make is never replaced.
	if err := os.MkdirAll(filepath.Join(v.Root(), "loras"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Root(), "loras", "mine.safetensors"), []byte("hand made"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := v.Link("loras/mine.safetensors", d); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Fatalf("Link over a regular file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "escape.safetensors")); !os.IsNotExist(err) {
		t.Fatal("a name with .. escaped the view root")
	}
}

func TestViewsPruneDropsEvictedAndCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, filepath.Join(dir, "cache"), 0, nil)
	root := filepath.Join(dir, "views")
	v, err := NewViews(root, s)
	if err != nil {
		t.Fatal(err)
	}
	b1, d1 := testBlob(100, 4)
	b2, d2 := testBlob(100, 5)
	mustPut(t, s, b1, d1)
	mustPut(t, s, b2, d2)
	if err := v.Link("vae/a.safetensors", d1); err != nil {
		t.Fatal(err)
	}
	if err := v.Link("vae/b.safetensors", d2); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(d1); err != nil {
		t.Fatal(err)
	}
	gone, err := v.Prune()
	if err != nil || len(gone) != 1 || gone[0] != "vae/a.safetensors" {
		t.Fatalf("Prune = %v, %v; want vae/a.safetensors", gone, err)
	}
	// A swap cut short by a crash leaves a temp link; reopening clears it.
	leftover := filepath.Join(root, "vae", viewTmpPrefix+"b.safetensors")
	if err := os.Symlink(s.blobPath(d2), leftover); err != nil {
		t.Fatal(err)
	}
	if _, err := NewViews(root, s); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(leftover); !os.IsNotExist(err) {
		t.Fatalf("leftover temp link survived reopening: %v", err)
	}
	names, _ := v.List()
	if len(names) != 1 || names["vae/b.safetensors"] != d2 {
		t.Fatalf("List after prune = %v", names)
	}
	if y := string(v.ExtraModelPathsYAML()); !strings.Contains(y, "base_path: \""+root+"\"") || !strings.Contains(y, "  loras: loras/\n") {
		t.Fatalf("extra_model_paths.yaml:\n%s", y)
	}
}
