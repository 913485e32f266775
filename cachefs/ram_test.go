package cachefs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

// ramModes runs f with mlock as this host allows it, and with mlock forced
// off, so the page-cache fallback is tested whether or not mlock works.
func ramModes(t *testing.T, f func(t *testing.T, noMlock bool)) {
	t.Run("mlock", func(t *testing.T) { f(t, false) })
	t.Run("fallback", func(t *testing.T) { f(t, true) })
}

// openTestRAM returns a RAM tier over s with a 256 KiB chunk, so small test
// blobs still take several lock-and-hash steps.
func openTestRAM(t *testing.T, s *Store, maxBytes int64, noMlock bool) *RAMTier {
	t.Helper()
	r, err := NewRAMTier(s, RAMConfig{MaxBytes: maxBytes, noMlock: noMlock})
	if err != nil {
		t.Fatalf("NewRAMTier: %v", err)
	}
	r.chunk = 256 << 10
	t.Cleanup(func() { r.Close() })
	return r
}

func mustPromote(t *testing.T, r *RAMTier, d proto.Digest) {
	t.Helper()
	if err := r.Promote(context.Background(), d); err != nil {
		t.Fatalf("Promote(%s): %v", d.Short(), err)
	}
}

// pins returns how many pins the Store holds on d.
func pins(s *Store, d proto.Digest) int {
	for _, b := range s.List() {
		if b.Digest == d {
			return b.Pins
		}
	}
	return -1
}

// corruptFile flips the byte at off in the file at p, as a failing disk
// might.
func corruptFile(t *testing.T, p string, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestRAMPromoteReadsBackSameBytes(t *testing.T) {
	ramModes(t, func(t *testing.T, noMlock bool) {
		s := openTestStore(t, t.TempDir(), 0, nil)
		b, d := testBlob(3<<20+123, 300) // not a whole number of chunks or pages
		mustPut(t, s, b, d)
		r := openTestRAM(t, s, 8<<20, noMlock)
		mustPromote(t, r, d)
		mustPromote(t, r, d) // already resident: a no-op

		got, release, ok := r.Acquire(d)
		if !ok || !bytes.Equal(got, b) {
			t.Fatalf("Acquire = %d bytes, %v; want the %d bytes put", len(got), ok, len(b))
		}
		release()
		list := r.List()
		if len(list) != 1 || list[0].Digest != d || list[0].Size != int64(len(b)) {
			t.Fatalf("List() = %+v, want one %d-byte blob", list, len(b))
		}
		if wantLocked := !noMlock && r.Locked(); list[0].Locked != wantLocked {
			t.Fatalf("List()[0].Locked = %v, want %v (Locked() = %v)", list[0].Locked, wantLocked, r.Locked())
		}
		if noMlock && r.Locked() {
			t.Fatalf("Locked() = true with mlock forced off")
		}
		if used, max := r.Usage(); used != int64(len(b)) || max != 8<<20 {
			t.Fatalf("Usage() = %d, %d; want %d, %d", used, max, len(b), 8<<20)
		}
		if n := pins(s, d); n != 1 {
			t.Fatalf("Store pins on a resident blob = %d, want 1", n)
		}

		if err := r.Demote(d); err != nil {
			t.Fatalf("Demote: %v", err)
		}
		if r.Has(d) || !s.Has(d) || pins(s, d) != 0 {
			t.Fatalf("after Demote: RAM Has %v, Store Has %v, pins %d; want false, true, 0", r.Has(d), s.Has(d), pins(s, d))
		}
		if _, _, ok := r.Acquire(d); ok {
			t.Fatalf("Acquire of a demoted blob succeeded")
		}
		if err := r.Demote(d); !errors.Is(err, ErrNotCached) {
			t.Fatalf("second Demote: err = %v, want ErrNotCached", err)
		}
	})
}

func TestRAMFallbackWarnsOnce(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	s := openTestStore(t, t.TempDir(), 0, nil)
	r, err := NewRAMTier(s, RAMConfig{MaxBytes: 1 << 20, noMlock: true,
		Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i := range 3 {
		b, d := testBlob(64<<10, 310+uint64(i))
		mustPut(t, s, b, d)
		mustPromote(t, r, d)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), "LimitMEMLOCK=infinity"); n != 1 {
		t.Fatalf("the mlock warning was logged %d times, want once:\n%s", n, logs.String())
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestRAMBudgetDemotesLeastRecentlyUsed(t *testing.T) {
	ramModes(t, func(t *testing.T, noMlock bool) {
		const size = 512 << 10
		s := openTestStore(t, t.TempDir(), 0, nil)
		ds := putN(t, s, 4, size, 320)
		r := openTestRAM(t, s, 3*size, noMlock)
		for _, d := range ds[:3] {
			mustPromote(t, r, d)
		}
		_, release, _ := r.Acquire(ds[0]) // a is now the most recently used
		release()
		mustPromote(t, r, ds[3])
		if r.Has(ds[1]) {
			t.Fatalf("least recently used blob b is still resident")
		}
		for _, d := range []proto.Digest{ds[0], ds[2], ds[3]} {
			if !r.Has(d) {
				t.Fatalf("blob %s was demoted, want only b gone", d.Short())
			}
		}
		if used, max := r.Usage(); used > max {
			t.Fatalf("Usage() = %d over the budget of %d", used, max)
		}
		if !s.Has(ds[1]) || pins(s, ds[1]) != 0 {
			t.Fatalf("demoted blob: on disk %v with %d pins; want on disk, unpinned", s.Has(ds[1]), pins(s, ds[1]))
		}
	})
}

func TestRAMAcquiredBlobsAreNotDemoted(t *testing.T) {
	ramModes(t, func(t *testing.T, noMlock bool) {
		const size = 512 << 10
		s := openTestStore(t, t.TempDir(), 0, nil)
		var blobs [][]byte
		var ds []proto.Digest
		for i := range 3 {
			b, d := testBlob(size, 330+uint64(i))
			mustPut(t, s, b, d)
			blobs, ds = append(blobs, b), append(ds, d)
		}
		r := openTestRAM(t, s, 2*size, noMlock)
		mustPromote(t, r, ds[0])
		mustPromote(t, r, ds[1])
		_, releaseA, _ := r.Acquire(ds[0])
		bb, releaseB, _ := r.Acquire(ds[1])
		_, releaseB2, _ := r.Acquire(ds[1]) // nested

		if err := r.Promote(context.Background(), ds[2]); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("Promote with every resident blob acquired: err = %v, want ErrNoSpace", err)
		}
		if r.Has(ds[2]) || pins(s, ds[2]) != 0 {
			t.Fatalf("a blob that did not fit is resident or pinned")
		}
		if err := r.Demote(ds[0]); !errors.Is(err, ErrPinned) {
			t.Fatalf("Demote of an acquired blob: err = %v, want ErrPinned", err)
		}

		releaseA()
		releaseA() // idempotent: must not release someone else's hold
		releaseB()
		releaseB()
		mustPromote(t, r, ds[2]) // a is free again and goes; b is still held
		if r.Has(ds[0]) || !r.Has(ds[1]) || !r.Has(ds[2]) {
			t.Fatalf("after making room: List = %+v; want b and c resident", r.List())
		}
		// a's demotion must not disturb readers of b.
		if !bytes.Equal(bb, blobs[1]) {
			t.Fatalf("b's bytes changed while another blob was demoted")
		}
		if err := r.Demote(ds[1]); !errors.Is(err, ErrPinned) {
			t.Fatalf("Demote of b with one hold left: err = %v, want ErrPinned", err)
		}
		releaseB2()
		if err := r.Demote(ds[1]); err != nil {
			t.Fatalf("Demote after the last release: %v", err)
		}
	})
}

func TestRAMTooLarge(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(2<<20, 340)
	mustPut(t, s, b, d)
	r := openTestRAM(t, s, 1<<20, false)
	if err := r.Promote(context.Background(), d); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Promote of a blob over the budget: err = %v, want ErrTooLarge", err)
	}
	if used, _ := r.Usage(); used != 0 || pins(s, d) != 0 {
		t.Fatalf("after a refused Promote: used %d, pins %d; want 0, 0", used, pins(s, d))
	}
}

func TestRAMNotCached(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	r := openTestRAM(t, s, 1<<20, false)
	_, d := testBlob(10, 345)
	if err := r.Promote(context.Background(), d); !errors.Is(err, ErrNotCached) {
		t.Fatalf("Promote of a blob not on disk: err = %v, want ErrNotCached", err)
	}
}

func TestRAMCorruptOnDiskIsDroppedAndRefetched(t *testing.T) {
	ramModes(t, func(t *testing.T, noMlock bool) {
		const key = "checkpoints/sdxl.safetensors"
		b, d := testBlob(2<<20, 350)
		o := newTestOrigin(t, key, b)
		s := openTestStore(t, t.TempDir(), 0, nil)
		p, _, err := s.Fetch(context.Background(), d, o, key)
		if err != nil {
			t.Fatal(err)
		}
		corruptFile(t, p, 1<<20+7)
		r := openTestRAM(t, s, 4<<20, noMlock)

		if err := r.Promote(context.Background(), d); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Promote of a corrupt blob: err = %v, want ErrDigestMismatch", err)
		}
		if s.Has(d) || r.Has(d) {
			t.Fatalf("corrupt blob kept: on disk %v, in RAM %v", s.Has(d), r.Has(d))
		}
		if used, _ := r.Usage(); used != 0 {
			t.Fatalf("RAM Usage after a failed Promote = %d, want 0", used)
		}
		assertNoTemp(t, s)

		if _, fetched, err := s.Fetch(context.Background(), d, o, key); err != nil || !fetched {
			t.Fatalf("Fetch after the drop = %v, %v; want a fresh download", fetched, err)
		}
		mustPromote(t, r, d)
		got, release, _ := r.Acquire(d)
		defer release()
		if !bytes.Equal(got, b) {
			t.Fatalf("refetched blob's bytes differ from the original")
		}
	})
}

func TestRAMResidentBlobIsNotEvictedFromDisk(t *testing.T) {
	const size = 256 << 10
	s := openTestStore(t, t.TempDir(), 2*size, nil)
	a := putN(t, s, 1, size, 360)[0]
	r := openTestRAM(t, s, size, false)
	mustPromote(t, r, a)
	// a is the least recently used on disk from here on, yet stays.
	for i := range 3 {
		d := putN(t, s, 1, size, 361+uint64(i))[0]
		if !s.Has(a) {
			t.Fatalf("disk tier evicted the RAM-resident blob after Put %d", i)
		}
		if !s.Has(d) {
			t.Fatalf("Put %d did not keep its own blob", i)
		}
	}
	big, dBig := testBlob(2*size, 370)
	if _, _, err := s.Put(context.Background(), dBig, bytes.NewReader(big)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put needing the resident blob's room: err = %v, want ErrNoSpace", err)
	}
	if err := r.Demote(a); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, big, dBig) // now a may go
	if s.Has(a) {
		t.Fatalf("demoted blob was not evictable")
	}
}

func TestRAMConcurrentPromoteSharesOne(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(2<<20, 380)
	mustPut(t, s, b, d)
	r := openTestRAM(t, s, 4<<20, false)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- r.Promote(context.Background(), d) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Promote: %v", err)
		}
	}
	if n := r.mapped.Load(); n != 1 {
		t.Fatalf("8 concurrent Promotes mapped the blob %d times, want 1", n)
	}
	if n := pins(s, d); n != 1 {
		t.Fatalf("Store pins = %d, want 1", n)
	}
}

func TestRAMEmptyBlob(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	_, d := testBlob(0, 0)
	mustPut(t, s, nil, d)
	r := openTestRAM(t, s, 1<<20, false)
	mustPromote(t, r, d)
	b, release, ok := r.Acquire(d)
	defer release()
	if !ok || len(b) != 0 {
		t.Fatalf("Acquire of the empty blob = %d bytes, %v; want 0, true", len(b), ok)
	}
	if used, _ := r.Usage(); used != 0 {
		t.Fatalf("the empty blob uses %d bytes of the budget", used)
	}
}

func TestRAMCancelledPromoteLeavesNothing(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(2<<20, 390)
	mustPut(t, s, b, d)
	r := openTestRAM(t, s, 4<<20, false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.promote(ctx, d); !errors.Is(err, context.Canceled) {
		t.Fatalf("promote with a cancelled context: err = %v, want context.Canceled", err)
	}
	if used, _ := r.Usage(); used != 0 || r.Has(d) || pins(s, d) != 0 {
		t.Fatalf("after a cancelled promote: used %d, resident %v, pins %d; want 0, false, 0", used, r.Has(d), pins(s, d))
	}
}

func TestRAMCloseKeepsAcquiredBytesUntilRelease(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	blobA, a := testBlob(1<<20, 400)
	blobB, b := testBlob(1<<20, 401)
	mustPut(t, s, blobA, a)
	mustPut(t, s, blobB, b)
	r := openTestRAM(t, s, 4<<20, false)
	mustPromote(t, r, a)
	mustPromote(t, r, b)
	got, release, _ := r.Acquire(a)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if r.Has(a) || r.Has(b) || pins(s, b) != 0 {
		t.Fatalf("after Close: a resident %v, b resident %v, b pins %d; want false, false, 0", r.Has(a), r.Has(b), pins(s, b))
	}
	if !bytes.Equal(got, blobA) {
		t.Fatalf("acquired bytes changed after Close")
	}
	if pins(s, a) != 1 {
		t.Fatalf("acquired blob unpinned before its release")
	}
	release()
	if pins(s, a) != 0 {
		t.Fatalf("acquired blob still pinned after its release")
	}
	if err := r.Promote(context.Background(), a); !errors.Is(err, ErrClosed) {
		t.Fatalf("Promote after Close: err = %v, want ErrClosed", err)
	}
	if _, _, ok := r.Acquire(a); ok {
		t.Fatalf("Acquire after Close succeeded")
	}
}

func TestNewRAMTierNeedsBudget(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	if _, err := NewRAMTier(s, RAMConfig{}); err == nil {
		t.Fatalf("NewRAMTier without MaxBytes succeeded")
	}
}
