package cachefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/iotest"

	"github.com/hearth-gpu/hearth/proto"
)

func TestPutHasPath(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(3<<20+17, 1)
	if s.Has(d) {
		t.Fatalf("Has(%s) before Put = true", d.Short())
	}
	p := mustPut(t, s, b, d)
	if want := filepath.Join(s.dir, "blobs", "sha256", d.Hex()[:2], d.Hex()); p != want {
		t.Fatalf("Put path = %s, want %s", p, want)
	}
	if !s.Has(d) {
		t.Fatalf("Has(%s) after Put = false", d.Short())
	}
	got, ok := s.Path(d)
	if !ok || got != p {
		t.Fatalf("Path(%s) = %q, %v; want %q, true", d.Short(), got, ok, p)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, b) {
		t.Fatalf("blob file differs from what was put")
	}
	if used, max := s.Usage(); used != int64(len(b)) || max != 0 {
		t.Fatalf("Usage() = %d, %d; want %d, 0", used, max, len(b))
	}
	assertNoTemp(t, s)

	// A second Put of a cached digest must not need its reader.
	p2, n, err := s.Put(context.Background(), d, iotest.ErrReader(errors.New("must not be read")))
	if err != nil || p2 != p || n != int64(len(b)) {
		t.Fatalf("Put of a cached blob = %q, %d, %v; want %q, %d, nil", p2, n, err, p, len(b))
	}
}

func TestPutWrongDigestLeavesNothing(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, _ := testBlob(1<<20, 2)
	_, other := testBlob(10, 3)
	_, _, err := s.Put(context.Background(), other, bytes.NewReader(b))
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Put with a wrong digest: err = %v, want ErrDigestMismatch", err)
	}
	if s.Has(other) {
		t.Fatalf("mismatching blob is cached")
	}
	if _, err := os.Stat(s.blobPath(other)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob file exists after mismatch: %v", err)
	}
	assertNoTemp(t, s)
	if used, _ := s.Usage(); used != 0 {
		t.Fatalf("Usage() = %d after a failed Put, want 0", used)
	}
}

func TestPutRejectsMalformedDigest(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	if _, _, err := s.Put(context.Background(), "sha256:XYZ", strings.NewReader("x")); err == nil {
		t.Fatalf("Put with a malformed digest succeeded")
	}
}

func TestPutCancelMidCopyLeavesNoTemp(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(8<<20, 4)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &cancelAfter{r: bytes.NewReader(b), after: 3 << 20, cancel: cancel}
	_, _, err := s.Put(ctx, d, r)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put cancelled mid-copy: err = %v, want context.Canceled", err)
	}
	if r.read < 3<<20 || r.read >= int64(len(b)) {
		t.Fatalf("reader gave %d bytes; the cancel did not land mid-copy", r.read)
	}
	if s.Has(d) {
		t.Fatalf("cancelled blob is cached")
	}
	assertNoTemp(t, s)
}

// cancelAfter is a reader that cancels its context once after bytes have
// been read, to cut a copy off in the middle.
type cancelAfter struct {
	r      *bytes.Reader
	after  int64
	read   int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read >= c.after {
		c.cancel()
	}
	return n, err
}

func TestWriteErrNamesDiskFull(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	_, d := testBlob(1, 5)
	err := s.writeErr(d, 42, &os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "filled up") || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("disk-full error = %v; want it to wrap ENOSPC and say the disk filled up and the file was removed", err)
	}
}

func TestConcurrentPutsOfOneDigest(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(2<<20, 6)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, _, err := s.Put(context.Background(), d, bytes.NewReader(b))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Put: %v", err)
		}
	}
	if used, _ := s.Usage(); used != int64(len(b)) {
		t.Fatalf("Usage() = %d after 8 Puts of one blob, want %d", used, len(b))
	}
	assertNoTemp(t, s)
}

func TestRemove(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(1000, 7)
	p := mustPut(t, s, b, d)
	unpin, err := s.Pin(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(d); !errors.Is(err, ErrPinned) {
		t.Fatalf("Remove of a pinned blob: err = %v, want ErrPinned", err)
	}
	unpin()
	if err := s.Remove(d); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if s.Has(d) {
		t.Fatalf("Has after Remove = true")
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob file still there after Remove: %v", err)
	}
	assertNoTemp(t, s)
	if err := s.Remove(d); !errors.Is(err, ErrNotCached) {
		t.Fatalf("second Remove: err = %v, want ErrNotCached", err)
	}
	if _, err := s.Pin(d); !errors.Is(err, ErrNotCached) {
		t.Fatalf("Pin of an absent blob: err = %v, want ErrNotCached", err)
	}
}

func TestPathDropsVanishedBlob(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(1000, 8)
	p := mustPut(t, s, b, d)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Path(d); ok {
		t.Fatalf("Path of a blob deleted by hand = ok")
	}
	if used, _ := s.Usage(); used != 0 || s.Has(d) {
		t.Fatalf("vanished blob still indexed: used %d, has %v", used, s.Has(d))
	}
}

func TestClose(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(100, 9)
	mustPut(t, s, b, d)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := s.Put(context.Background(), d, bytes.NewReader(b)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close: err = %v, want ErrClosed", err)
	}
	if s.Has(d) {
		t.Fatalf("Has after Close = true")
	}
}

func TestListSortedByDigest(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	var want []proto.Digest
	for i := range 5 {
		b, d := testBlob(100+i, uint64(10+i))
		mustPut(t, s, b, d)
		want = append(want, d)
	}
	list := s.List()
	if len(list) != len(want) {
		t.Fatalf("List has %d blobs, want %d", len(list), len(want))
	}
	for i := 1; i < len(list); i++ {
		if list[i-1].Digest >= list[i].Digest {
			t.Fatalf("List not sorted by digest: %s before %s", list[i-1].Digest, list[i].Digest)
		}
	}
}
