package cachefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// openPolicyStore is openTestStore with the policy newPolicy makes, for
// tests that need a given eviction order (LRU's, mostly).
func openPolicyStore(t *testing.T, dir string, maxBytes int64, clock *testClock, newPolicy func(int64) policy) *Store {
	t.Helper()
	if clock == nil {
		clock = newTestClock()
	}
	s, err := openPolicy(Config{
		Dir:          dir,
		MaxBytes:     maxBytes,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clock:        clock.Now,
		FetchBackoff: time.Millisecond,
	}, newPolicy)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func lruPolicy(int64) policy { return newLRU() }

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
	s := openPolicyStore(t, t.TempDir(), 300, nil, lruPolicy)
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
	for _, sp := range simPolicies {
		t.Run(sp.name, func(t *testing.T) { testPinnedNeverEvicted(t, sp.new) })
	}
}

func testPinnedNeverEvicted(t *testing.T, newPolicy func(int64) policy) {
	s := openPolicyStore(t, t.TempDir(), 300, nil, newPolicy)
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

// Every policy is seeded oldest use first, so each evicts the oldest here.
func TestOpenEvictsWhenBudgetShrank(t *testing.T) {
	for _, sp := range simPolicies {
		t.Run(sp.name, func(t *testing.T) { testOpenEvictsWhenBudgetShrank(t, sp.new) })
	}
}

func testOpenEvictsWhenBudgetShrank(t *testing.T, newPolicy func(int64) policy) {
	dir := t.TempDir()
	clock := newTestClock()
	s := openPolicyStore(t, dir, 0, clock, newPolicy)
	ds := putN(t, s, 3, 100, 110)
	s.Close()
	s2 := openPolicyStore(t, dir, 200, clock, newPolicy)
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
	s := &Store{policy: newLRU(), blobs: map[proto.Digest]*entry{
		c: {size: 10, lastUsed: t2}, a: {size: 10, lastUsed: t1}, b: {size: 10, lastUsed: t1},
	}}
	s.seedPolicy()
	got := s.policy.victims(15, func(proto.Digest) bool { return false })
	want := []proto.Digest{min(a, b), max(a, b)}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("lru victims = %v, want %v (oldest first, ties by digest)", got, want)
	}
}

// TestStoreEvictsByS3FIFO checks the store's default policy end to end; LRU
// would evict a in both steps.
func TestStoreEvictsByS3FIFO(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 300, nil)
	a := putN(t, s, 1, 100, 130)[0]
	if _, ok := s.Path(a); !ok { // a is used once more: it earns main
		t.Fatal("Path failed")
	}
	bc := putN(t, s, 2, 100, 131)
	b, c := bc[0], bc[1]
	d := putN(t, s, 1, 100, 133)[0]
	if s.Has(b) || !s.Has(a) || !s.Has(c) || !s.Has(d) {
		t.Fatalf("after d: List = %+v; want b, used once, evicted, a kept", s.List())
	}
	// b comes back soon: as a ghost it goes straight to main, and c, new
	// and unused, makes room.
	bb, _ := testBlob(100, 131)
	mustPut(t, s, bb, b)
	if s.Has(c) || !s.Has(b) {
		t.Fatalf("after b again: List = %+v; want c evicted", s.List())
	}
	// Now small holds only d: it goes, not a (least recently used) nor b.
	e := putN(t, s, 1, 100, 134)[0]
	if s.Has(d) || !s.Has(a) || !s.Has(b) || !s.Has(e) {
		t.Fatalf("after e: List = %+v; want d evicted from small, a and b kept in main", s.List())
	}
}

// Use counts are not on disk: after a restart only recency (mtime) orders
// blobs. Here a, used four times before b and c arrived, is kept by a
// running store but is the first to go after a restart.
func TestReopenForgetsUseCounts(t *testing.T) {
	run := func(restart bool) (a proto.Digest, s *Store) {
		dir := t.TempDir()
		clock := newTestClock()
		s = openTestStore(t, dir, 300, clock)
		a = putN(t, s, 1, 100, 140)[0]
		for range 3 {
			if _, ok := s.Path(a); !ok {
				t.Fatal("Path failed")
			}
		}
		putN(t, s, 2, 100, 141)
		if restart {
			s.Close()
			s = openTestStore(t, dir, 300, clock)
		}
		putN(t, s, 1, 100, 143)
		return a, s
	}
	if a, s := run(false); !s.Has(a) {
		t.Fatalf("without a restart the often used blob was evicted; List = %+v", s.List())
	}
	if a, s := run(true); s.Has(a) {
		t.Fatalf("after a restart the oldest blob was kept; List = %+v", s.List())
	}
}

// dig returns a distinct well-formed digest for policy unit tests.
func dig(i int) proto.Digest { return proto.Digest(fmt.Sprintf("sha256:%064x", i)) }

func nonePinned(proto.Digest) bool { return false }

// evictN asks p for victims worth need and evicts them as the store does.
func evictN(p policy, need int64) []proto.Digest {
	vs := p.victims(need, nonePinned)
	for _, v := range vs {
		p.remove(v)
	}
	return vs
}

func wantVictims(t *testing.T, what string, got []proto.Digest, want ...proto.Digest) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: victims = %v, want %v", what, shortAll(got), shortAll(want))
	}
}

func shortAll(ds []proto.Digest) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Hex()[56:])
	}
	return out
}

func TestGDSFOrder(t *testing.T) {
	a, b, c, d, e := dig(1), dig(2), dig(3), dig(4), dig(5)
	p := newGDSF(bytesCost)
	p.admit(a, 10)
	p.access(a)
	p.access(a) // H(a) = 3
	p.admit(b, 10)
	p.admit(c, 10) // H = 1 each
	// LRU would take a, the least recently used.
	wantVictims(t, "the least used, oldest first", evictN(p, 10), b)
	if p.clock != 1 {
		t.Fatalf("clock = %v after evicting H=1, want 1", p.clock)
	}
	wantVictims(t, "the least used", evictN(p, 10), c)
	// Aging: with L = 1 a new blob starts at H = 2, still below a...
	p.admit(d, 10)
	wantVictims(t, "a new blob below the frequent one", evictN(p, 10), d)
	// ...and with L = 2 at 3, level with a's old uses: a, older, goes.
	p.admit(e, 10)
	wantVictims(t, "the aged-out frequent blob", evictN(p, 10), a)

	// Size does not matter with bytesCost, but does with fetchTimeCost:
	// a small blob costs more to fetch per byte, so the big one goes.
	q := newGDSF(fetchTimeCost(10))
	q.admit(a, 1)
	q.admit(b, 100)
	wantVictims(t, "fetchTimeCost: the big blob", evictN(q, 1), b)
}

func TestGDSFRemoveOnlyAgesOnEviction(t *testing.T) {
	a, b := dig(1), dig(2)
	p := newGDSF(bytesCost)
	p.admit(a, 10)
	p.access(a)
	p.admit(b, 10)
	p.remove(a) // Remove, not an eviction
	if p.clock != 0 {
		t.Fatalf("clock = %v after a Remove, want 0", p.clock)
	}
	// Victims that were not evicted (a Put that failed) do not age either.
	p.victims(10, nonePinned)
	p.admit(a, 10)
	p.remove(a)
	if p.clock != 0 {
		t.Fatalf("clock = %v after a Remove of a blob not among the last victims, want 0", p.clock)
	}
}

func TestS3FIFOOrder(t *testing.T) {
	a, b, c, d := dig(1), dig(2), dig(3), dig(4)
	p := newS3FIFO(100) // small queue: 10 bytes
	p.admit(a, 10)
	p.access(a)
	p.admit(b, 10)
	p.admit(c, 10)
	// LRU would take a. a was used in small: it moves to main; b goes.
	wantVictims(t, "small's oldest unused", evictN(p, 10), b)
	if it := p.items[a].Value.(*s3Item); !it.inMain || it.uses != 0 {
		t.Fatalf("a = %+v, want promoted to main with its uses spent", it)
	}
	if _, ok := p.ghosts[b]; !ok {
		t.Fatalf("evicted b is not a ghost")
	}
	// b returns while a ghost: straight to main.
	p.admit(b, 10)
	if !p.items[b].Value.(*s3Item).inMain {
		t.Fatalf("b came back as a ghost but is not in main")
	}
	// small (c) holds its share, so it gives first, though c is newer than a.
	wantVictims(t, "small first while it holds its share", evictN(p, 10), c)
	// small is empty: main gives. a (oldest in main) has a use: it gets
	// another round, and b, with none, goes.
	p.access(a)
	wantVictims(t, "main's oldest without uses", evictN(p, 10), b)
	// Removing a blob that was not a victim leaves no ghost.
	p.admit(d, 10)
	p.remove(d)
	if _, ok := p.ghosts[d]; ok {
		t.Fatalf("removed (not evicted) d became a ghost")
	}
	// The ghost queue is bounded in bytes (90 here).
	for i := range 20 {
		p.admit(dig(100+i), 10)
		evictN(p, 10)
	}
	if p.ghostSize > p.ghostMax {
		t.Fatalf("ghosts hold %d bytes, over %d", p.ghostSize, p.ghostMax)
	}
}

func TestSIEVEOrder(t *testing.T) {
	a, b, c, d := dig(1), dig(2), dig(3), dig(4)
	p := newSIEVE()
	p.admit(a, 10)
	p.access(a)
	p.admit(b, 10)
	p.admit(c, 10)
	// LRU would take a. The hand passes a, clearing its bit, and takes b.
	wantVictims(t, "first unvisited from the tail", evictN(p, 10), b)
	// The hand stays where it stopped, past a, and walks on toward the
	// newest: c, then d, go before a, though a is older and its bit clear.
	p.admit(d, 10)
	wantVictims(t, "from the hand, not the tail", evictN(p, 10), c)
	wantVictims(t, "the newest, before wrapping", evictN(p, 10), d)
	wantVictims(t, "after wrapping to the tail", evictN(p, 10), a)
}

// TestPolicyVictimsContract checks what the store relies on, for every
// policy: pinned blobs are never returned, victims cover need when they
// can, else all unpinned blobs come back, each once, and blobs returned
// but not removed (a Put that failed with ErrNoSpace) are not lost.
func TestPolicyVictimsContract(t *testing.T) {
	for _, sp := range simPolicies {
		t.Run(sp.name, func(t *testing.T) {
			p := sp.new(150)
			size := map[proto.Digest]int64{}
			for i := range 5 {
				d := dig(i)
				size[d] = int64(10 * (i + 1))
				p.admit(d, size[d])
				if i%2 == 0 {
					p.access(d)
				}
			}
			pinned := func(d proto.Digest) bool { return d == dig(0) || d == dig(3) } // 10 + 40 bytes
			check := func(need int64) []proto.Digest {
				t.Helper()
				vs := p.victims(need, pinned)
				var freed int64
				seen := map[proto.Digest]bool{}
				for _, v := range vs {
					if pinned(v) || seen[v] || size[v] == 0 {
						t.Fatalf("victims(%d) = %v: pinned, repeated or unknown", need, shortAll(vs))
					}
					seen[v] = true
					freed += size[v]
				}
				var free int64
				for d, n := range size {
					if !pinned(d) {
						free += n
					}
				}
				if freed < min(need, free) {
					t.Fatalf("victims(%d) free %d bytes, want at least %d", need, freed, min(need, free))
				}
				return vs
			}
			check(25)
			check(25) // again, nothing evicted in between
			if vs := check(1000); len(vs) != 3 {
				t.Fatalf("victims(1000) = %v, want all 3 unpinned blobs", shortAll(vs))
			}
			for _, v := range check(35) {
				p.remove(v)
				delete(size, v)
			}
			if vs := check(1000); len(vs) != len(size)-2 {
				t.Fatalf("after evicting, victims(1000) = %v, want the %d unpinned left", shortAll(vs), len(size)-2)
			}
		})
	}
}

// TestPoliciesOnTrace replays a drifting trace at a budget so tight that
// some jobs cannot fit (a Flux checkpoint pinned while its LoRAs are
// fetched, or one over the whole budget), and fails if any policy breaks
// the contract simulate checks.
func TestPoliciesOnTrace(t *testing.T) {
	tr := genTrace(traceSpec{name: "small", seed: 7, jobs: 3000, skew: 1.0, driftEvery: 100})
	for _, sp := range simPolicies {
		for _, restart := range []int{0, 500} {
			res, err := simulate(tr, sp.new(20*gb), 20*gb, restart, sp.new)
			if err != nil {
				t.Fatalf("%s, restart every %d jobs: %v", sp.name, restart, err)
			}
			if res.maxUsed > res.budget {
				t.Fatalf("%s: used %d bytes, over the budget %d", sp.name, res.maxUsed, res.budget)
			}
			if res.admitRefused == 0 {
				t.Fatalf("%s: no job overflowed the budget; the trace no longer tests ErrNoSpace", sp.name)
			}
		}
	}
}

// TestDefaultPolicyBeatsLRU keeps the claim in the package comment true:
// the default policy fetches fewer bytes than LRU, with steady and with
// drifting popularity.
func TestDefaultPolicyBeatsLRU(t *testing.T) {
	for _, spec := range []traceSpec{
		{name: "steady", seed: 8, jobs: 6000, warmup: 1000, skew: 0.9},
		{name: "drift", seed: 9, jobs: 6000, warmup: 1000, skew: 1.0, driftEvery: 200},
	} {
		tr := genTrace(spec)
		def, err := simulate(tr, defaultPolicy(100*gb), 100*gb, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		base, err := simulate(tr, newLRU(), 100*gb, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: byte-miss %.4f, LRU %.4f", spec.name, def.byteMiss(), base.byteMiss())
		if def.byteMiss() >= base.byteMiss() {
			t.Errorf("%s: default policy's byte-miss ratio %.4f is not below LRU's %.4f", spec.name, def.byteMiss(), base.byteMiss())
		}
	}
}

// S3-FIFO with its small queue under its share, main empty and the only
// blob in small used once: the walk of small moves that blob to main with
// its use spent, and it must then be evicted from there rather than the
// Put refused for want of room.
func TestS3FIFOEvictsWhatTheSmallQueueMovedToMain(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 1000, nil)
	small := putN(t, s, 1, 64, 70)[0]
	if _, ok := s.Path(small); !ok {
		t.Fatal("Path failed")
	}
	b, d := testBlob(950, 71)
	if _, _, err := s.Put(context.Background(), d, bytes.NewReader(b)); err != nil {
		t.Fatalf("Put of 950 bytes into a 1000-byte cache holding 64 unpinned bytes: %v", err)
	}
	if s.Has(small) || !s.Has(d) {
		t.Fatalf("after the Put: small held %v, new held %v; want the small blob evicted for the new one", s.Has(small), s.Has(d))
	}
}
