package cachefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestFetchOntoFullDisk fills a real (small tmpfs) file system: the fetch
// fails with an error that says the disk is full, the temp file is removed,
// and the blob already cached is untouched. Mounting needs root; without it
// the test says so and skips.
func TestFetchOntoFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root")
	}
	mnt := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=8m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v); the disk-full path is covered only where it can", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	s := openTestStore(t, filepath.Join(mnt, "cache"), 0, nil) // no budget: the disk is the limit
	small, ds := testBlob(2<<20, 31)
	mustPut(t, s, small, ds)

	big, db := testBlob(16<<20, 32)
	origin := newTestOrigin(t, "checkpoints/big.safetensors", big)
	_, _, err := s.Fetch(context.Background(), db, origin, "checkpoints/big.safetensors")
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "filled up") {
		t.Fatalf("fetch onto a full disk: %v; want an error that names the full disk", err)
	}
	assertNoTemp(t, s)
	if s.Has(db) {
		t.Fatal("the blob that did not fit is in the index")
	}
	if err := s.Verify(context.Background(), ds); err != nil {
		t.Fatalf("the blob cached before was harmed: %v", err)
	}
	// With the space back (the partial file gone), a smaller blob still fits.
	ok, dok := testBlob(1<<20, 33)
	mustPut(t, s, ok, dok)
}
