package cachefs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

func TestReopenRebuildsIndex(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock()
	s := openTestStore(t, dir, 0, clock)
	var ds []proto.Digest
	for i := range 4 {
		b, d := testBlob(1000*(i+1), uint64(20+i))
		mustPut(t, s, b, d)
		ds = append(ds, d)
	}
	if _, ok := s.Path(ds[0]); !ok { // a use after the Put must survive too
		t.Fatal("Path of a cached blob failed")
	}
	before := s.List()
	usedBefore, _ := s.Usage()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTestStore(t, dir, 0, clock)
	after := s2.List()
	if len(after) != len(before) {
		t.Fatalf("after reopen List has %d blobs, want %d", len(after), len(before))
	}
	for i := range before {
		b, a := before[i], after[i]
		if a.Digest != b.Digest || a.Size != b.Size || !a.LastUsed.Equal(b.LastUsed) || a.Pins != 0 {
			t.Fatalf("after reopen blob %d = %+v, want %+v", i, a, b)
		}
	}
	if used, _ := s2.Usage(); used != usedBefore {
		t.Fatalf("after reopen Usage = %d, want %d", used, usedBefore)
	}
}

func TestOpenRemovesLeftoverTemp(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 0, nil)
	s.Close()
	tmp := filepath.Join(dir, "tmp")
	for _, name := range []string{"abc.123.partial", "evict-abc-1"} {
		if err := os.WriteFile(filepath.Join(tmp, name), []byte("half a blob"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(tmp, "junk"), 0o755); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir, 0, nil)
	assertNoTemp(t, s2)
}

// Open checks names and types, not contents (rehashing 24 GB blobs on
// every start is too slow): see the package comment. Stray names go; a
// well-named file with wrong bytes stays until Verify finds it.
func TestOpenScanRemovesStraysAndKeepsUnverifiedBlobs(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 0, nil)
	good, gd := testBlob(5000, 30)
	mustPut(t, s, good, gd)
	s.Close()

	blobs := filepath.Join(dir, "blobs", "sha256")
	_, bad := testBlob(5000, 31) // a name whose bytes we will not write
	half := filepath.Join(blobs, bad.Hex()[:2], bad.Hex())
	_, wrongShard := testBlob(1, 32)
	_, empty := testBlob(1, 33)
	strays := map[string][]byte{
		filepath.Join(blobs, gd.Hex()[:2], "not-a-digest"):                                []byte("x"),
		filepath.Join(blobs, gd.Hex()[:2], gd.Hex()+".partial"):                           []byte("x"),
		filepath.Join(blobs, flipShard(wrongShard.Hex()[:2]), wrongShard.Hex()):           []byte("x"),
		filepath.Join(blobs, empty.Hex()[:2], empty.Hex()):                                nil,
		filepath.Join(blobs, "zz", "whatever"):                                            []byte("x"),
		filepath.Join(blobs, "README"):                                                    []byte("x"),
		filepath.Join(blobs, gd.Hex()[:2], "0000000000000000000000000000000000000000000"): []byte("x"),
	}
	for p, b := range strays {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(half), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(half, good[:2500], 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(blobs, gd.Hex()[:2], flipShard(gd.Hex()[:2])+gd.Hex()[2:])
	if err := os.Symlink(s.blobPath(gd), link); err != nil {
		t.Fatal(err)
	}

	s2 := openTestStore(t, dir, 0, nil)
	for p := range strays {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stray %s survived Open: %v", p, err)
		}
	}
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("symlink %s survived Open: %v", link, err)
	}
	if !s2.Has(gd) {
		t.Fatalf("good blob lost on Open")
	}
	if !s2.Has(bad) {
		t.Fatalf("Open dropped a well-named blob; it is documented to keep it until Verify")
	}
	if err := s2.Verify(context.Background(), gd); err != nil {
		t.Fatalf("Verify of a good blob: %v", err)
	}
	if err := s2.Verify(context.Background(), bad); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Verify of a corrupt blob: err = %v, want ErrDigestMismatch", err)
	}
	if s2.Has(bad) {
		t.Fatalf("corrupt blob still cached after Verify")
	}
	if _, err := os.Stat(half); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corrupt blob file still there after Verify: %v", err)
	}
	if used, _ := s2.Usage(); used != int64(len(good)) {
		t.Fatalf("Usage = %d, want %d", used, len(good))
	}
}

// flipShard returns a different two-hex-digit shard name.
func flipShard(h string) string {
	if h[0] == '0' {
		return "1" + h[1:]
	}
	return "0" + h[1:]
}

func TestOpenKeepsEmptyBlob(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 0, nil)
	b, d := testBlob(0, 0)
	mustPut(t, s, b, d)
	s.Close()
	s2 := openTestStore(t, dir, 0, nil)
	if !s2.Has(d) {
		t.Fatalf("the empty blob %s was dropped on Open", d.Short())
	}
}

func TestOpenLocksDir(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir, 0, nil)
	if s2, err := Open(Config{Dir: dir}); err == nil {
		s2.Close()
		t.Fatalf("a second Open of a directory in use succeeded")
	}
	s.Close()
	s3, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s3.Close()
}

func TestOpenRejectsBadConfig(t *testing.T) {
	if _, err := Open(Config{}); err == nil {
		t.Fatalf("Open without a Dir succeeded")
	}
	if _, err := Open(Config{Dir: t.TempDir(), MaxBytes: -1}); err == nil {
		t.Fatalf("Open with a negative budget succeeded")
	}
}
