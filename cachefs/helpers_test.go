package cachefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// testClock advances one second per reading, so every use gets a distinct,
// whole-second time that survives a round trip through a file's mtime.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Unix(1_700_000_000, 0)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func openTestStore(t *testing.T, dir string, maxBytes int64, clock *testClock) *Store {
	t.Helper()
	if clock == nil {
		clock = newTestClock()
	}
	s, err := Open(Config{
		Dir:          dir,
		MaxBytes:     maxBytes,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clock:        clock.Now,
		FetchBackoff: time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testBlob returns n pseudo-random bytes (fixed by seed) and their digest.
func testBlob(n int, seed uint64) ([]byte, proto.Digest) {
	b := make([]byte, n)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(b)
	sum := sha256.Sum256(b)
	return b, proto.DigestFromSum(sum[:])
}

func mustPut(t *testing.T, s *Store, b []byte, d proto.Digest) string {
	t.Helper()
	p, n, err := s.Put(context.Background(), d, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Put(%s): %v", d.Short(), err)
	}
	if n != int64(len(b)) {
		t.Fatalf("Put(%s) = %d bytes, want %d", d.Short(), n, len(b))
	}
	return p
}

// dirEntries lists the names in dir, failing the test if it cannot.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s): %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// assertNoTemp fails if the store's tmp/ holds anything.
func assertNoTemp(t *testing.T, s *Store) {
	t.Helper()
	if names := dirEntries(t, s.tmpDir); len(names) != 0 {
		t.Fatalf("tmp/ holds %v, want nothing", names)
	}
}

// countingOrigin is a test wrapper around a real DirOrigin that counts
// Open calls, optionally corrupts the first corruptOpens downloads (flips
// one byte) and optionally holds every read until gate is closed.
type countingOrigin struct {
	Origin
	opens        atomic.Int32
	corruptOpens int32
	gate         chan struct{}
}

func (o *countingOrigin) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	n := o.opens.Add(1)
	rc, size, err := o.Origin.Open(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return &testReader{rc: rc, corrupt: n <= o.corruptOpens, gate: o.gate}, size, nil
}

type testReader struct {
	rc      io.ReadCloser
	corrupt bool
	gate    chan struct{}
	off     int64
}

func (r *testReader) Read(p []byte) (int, error) {
	if r.gate != nil {
		<-r.gate
	}
	n, err := r.rc.Read(p)
	if r.corrupt && r.off == 0 && n > 0 {
		p[0] ^= 0xff
	}
	r.off += int64(n)
	return n, err
}

func (r *testReader) Close() error { return r.rc.Close() }

// newTestOrigin returns a DirOrigin in a temp dir holding b at key.
func newTestOrigin(t *testing.T, key string, b []byte) *DirOrigin {
	t.Helper()
	o, err := NewDirOrigin(filepath.Join(t.TempDir(), "origin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.Put(context.Background(), key, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return o
}
