package cachefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

// putN puts n blobs of size bytes each and returns their digests in order.
func putN(t *testing.T, s *Store, n, size int, seed uint64) []proto.Digest {
	t.Helper()
	var ds []proto.Digest
	for i := range n {
		b, d := testBlob(size, seed+uint64(i))
		mustPut(t, s, b, d)
		ds = append(ds, d)
	}
	return ds
}

func TestEvictLeastRecentlyUsed(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 300, nil)
	ds := putN(t, s, 3, 100, 40)     // a, b, c: full budget
	if _, ok := s.Path(ds[0]); !ok { // a is now the most recently used
		t.Fatal("Path failed")
	}
	d := putN(t, s, 1, 100, 50)[0]
	if s.Has(ds[1]) {
		t.Fatalf("least recently used blob b was not evicted")
	}
	for _, keep := range []proto.Digest{ds[0], ds[2], d} {
		if !s.Has(keep) {
			t.Fatalf("blob %s evicted, want only b gone", keep.Short())
		}
	}
	if _, err := os.Stat(s.blobPath(ds[1])); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("evicted blob's file is still there: %v", err)
	}
	if used, max := s.Usage(); used != 300 || max != 300 {
		t.Fatalf("Usage() = %d, %d; want 300, 300", used, max)
	}
	assertNoTemp(t, s)

	// A bigger blob evicts as many of the oldest as it needs.
	b, big := testBlob(250, 60)
	mustPut(t, s, b, big)
	if used, _ := s.Usage(); used > 300 {
		t.Fatalf("Usage() = %d over the budget of 300", used)
	}
	if !s.Has(big) || s.Has(ds[2]) || s.Has(ds[0]) || s.Has(d) {
		t.Fatalf("after a 250-byte Put: List = %+v; want only the new blob", s.List())
	}
}

func TestPinnedNeverEvictedAndErrNoSpace(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 300, nil)
	ds := putN(t, s, 3, 100, 70)
	var unpins []func()
	for _, d := range ds {
		unpin, err := s.Pin(d)
		if err != nil {
			t.Fatal(err)
		}
		unpins = append(unpins, unpin)
	}
	b, d := testBlob(100, 80)
	_, _, err := s.Put(context.Background(), d, bytes.NewReader(b))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put with every blob pinned: err = %v, want ErrNoSpace", err)
	}
	if s.Has(d) {
		t.Fatalf("blob that did not fit was kept")
	}
	for _, p := range ds {
		if !s.Has(p) {
			t.Fatalf("pinned blob %s was evicted", p.Short())
		}
	}
	assertNoTemp(t, s)

	unpins[1]()
	unpins[1]() // idempotent: must not unpin a second holder
	if got := s.List(); pinsOf(got, ds[1]) != 0 || pinsOf(got, ds[0]) != 1 {
		t.Fatalf("pins after unpin = %+v", got)
	}
	mustPut(t, s, b, d)
	if s.Has(ds[1]) || !s.Has(ds[0]) || !s.Has(ds[2]) || !s.Has(d) {
		t.Fatalf("want only the unpinned blob evicted; List = %+v", s.List())
	}
}

func pinsOf(list []BlobInfo, d proto.Digest) int {
	for _, b := range list {
		if b.Digest == d {
			return b.Pins
		}
	}
	return -1
}

func TestNestedPins(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 100, nil)
	d := putN(t, s, 1, 100, 90)[0]
	u1, _ := s.Pin(d)
	u2, _ := s.Pin(d)
	u1()
	b, other := testBlob(100, 91)
	if _, _, err := s.Put(context.Background(), other, bytes.NewReader(b)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put while a second pin holds the only blob: err = %v, want ErrNoSpace", err)
	}
	u2()
	mustPut(t, s, b, other)
	if s.Has(d) {
		t.Fatalf("fully unpinned blob was not evicted")
	}
}

func TestPutLargerThanBudget(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 100, nil)
	b, d := testBlob(150, 100)
	_, _, err := s.Put(context.Background(), d, bytes.NewReader(b))
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Put over the whole budget: err = %v, want ErrTooLarge", err)
	}
	if s.Has(d) {
		t.Fatalf("oversized blob kept")
	}
	assertNoTemp(t, s)
}

func TestOpenEvictsWhenBudgetShrank(t *testing.T) {
	dir := t.TempDir()
	clock := newTestClock()
	s := openTestStore(t, dir, 0, clock)
	ds := putN(t, s, 3, 100, 110)
	s.Close()
	s2 := openTestStore(t, dir, 200, clock)
	if s2.Has(ds[0]) || !s2.Has(ds[1]) || !s2.Has(ds[2]) {
		t.Fatalf("after reopening with a smaller budget List = %+v; want the oldest blob evicted", s2.List())
	}
	if used, _ := s2.Usage(); used != 200 {
		t.Fatalf("Usage() = %d, want 200", used)
	}
}

func TestLRUPolicyOrder(t *testing.T) {
	_, a := testBlob(1, 120)
	_, b := testBlob(1, 121)
	_, c := testBlob(1, 122)
	clock := newTestClock()
	t1, t2 := clock.Now(), clock.Now()
	cands := []candidate{{c, 10, t2}, {a, 10, t1}, {b, 10, t1}}
	got := lru{}.victims(cands, 15)
	want := []proto.Digest{min(a, b), max(a, b)}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("lru victims = %v, want %v (oldest first, ties by digest)", got, want)
	}
}
