package gpu

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
)

const gib = 1 << 30

func newPool(t *testing.T, slots int) *SlotPool {
	t.Helper()
	p, err := NewSlotPool(0, uint64(slots)*gib+gib/2, gib/2, gib)
	if err != nil {
		t.Fatalf("NewSlotPool: %v", err)
	}
	if p.Slots() != slots {
		t.Fatalf("Slots() = %d, want %d", p.Slots(), slots)
	}
	return p
}

func TestNewSlotPool(t *testing.T) {
	p, err := NewSlotPool(3, 141*gib, 5*gib, 16*gib)
	if err != nil {
		t.Fatal(err)
	}
	if p.Slots() != 8 || p.SlotBytes() != 16*gib || p.GPU() != 3 { // 136/16 = 8.5: the half slot is unused
		t.Fatalf("pool = %d slots of %d bytes on GPU %d", p.Slots(), p.SlotBytes(), p.GPU())
	}
	if s := p.Stats(); s != (PoolStats{Slots: 8, Free: 8, LargestFreeRun: 8}) {
		t.Fatalf("Stats() = %+v", s)
	}
	for _, tc := range []struct {
		name                        string
		capacity, reserve, slotSize uint64
	}{
		{"zero slot size", 141 * gib, 0, 0},
		{"reserve equals capacity", 8 * gib, 8 * gib, gib},
		{"reserve above capacity", 8 * gib, 9 * gib, gib},
		{"slot larger than usable", 8 * gib, gib, 8 * gib},
		{"absurdly many slots", 141 * gib, 0, 1},
	} {
		if _, err := NewSlotPool(0, tc.capacity, tc.reserve, tc.slotSize); err == nil {
			t.Errorf("%s: NewSlotPool succeeded, want an error", tc.name)
		}
	}
}

func TestAcquireFirstFitAndRelease(t *testing.T) {
	p := newPool(t, 8)
	a, err := p.Acquire(3, "a")
	if err != nil || a != 0 {
		t.Fatalf("Acquire(3) = %d, %v; want 0", a, err)
	}
	b, err := p.Acquire(2, "b")
	if err != nil || b != 3 {
		t.Fatalf("Acquire(2) = %d, %v; want 3", b, err)
	}
	for slot, want := range []string{"a", "a", "a", "b", "b", "", "", ""} {
		if got := p.Owner(slot); got != want {
			t.Errorf("Owner(%d) = %q, want %q", slot, got, want)
		}
	}
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	// First fit: a 2-run now fits in the hole a left at 0..2.
	c, err := p.Acquire(2, "c")
	if err != nil || c != 0 {
		t.Fatalf("Acquire(2) after release = %d, %v; want 0", c, err)
	}
	// A 3-run does not fit in the 1-slot hole at 2, so it goes after b.
	d, err := p.Acquire(3, "d")
	if err != nil || d != 5 {
		t.Fatalf("Acquire(3) = %d, %v; want 5", d, err)
	}
	want := []Run{{0, 2, "c"}, {3, 2, "b"}, {5, 3, "d"}}
	if got := p.Runs(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Runs() = %v, want %v", got, want)
	}
	if _, err := p.Acquire(1, "e"); err != nil {
		t.Fatalf("Acquire(1) into the last hole: %v", err)
	}
	if _, err := p.Acquire(1, "f"); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Acquire on a full pool = %v, want ErrNoRoom", err)
	}
}

func TestReleaseErrors(t *testing.T) {
	p := newPool(t, 4)
	first, _ := p.Acquire(3, "a")
	for _, slot := range []int{-1, 1, 3, 4} { // out of range, inside a run, free, past the end
		if err := p.Release(slot); !errors.Is(err, ErrNotHeld) {
			t.Errorf("Release(%d) = %v, want ErrNotHeld", slot, err)
		}
	}
	if err := p.Release(first); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(first); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("double Release = %v, want ErrNotHeld", err)
	}
	if s := p.Stats(); s.Free != 4 {
		t.Fatalf("Free = %d after releasing everything, want 4", s.Free)
	}
}

func TestAcquireBadRequests(t *testing.T) {
	p := newPool(t, 4)
	for _, k := range []int{0, -1, 5} {
		if _, err := p.Acquire(k, "a"); !errors.Is(err, ErrBadRange) {
			t.Errorf("Acquire(%d) = %v, want ErrBadRange", k, err)
		}
	}
	if _, err := p.Acquire(1, ""); !errors.Is(err, ErrBadRange) {
		t.Errorf("Acquire with no owner = %v, want ErrBadRange", err)
	}
	for _, tc := range [][2]int{{-1, 1}, {0, 0}, {3, 2}, {4, 1}, {0, 5}} {
		if err := p.AcquireAt(tc[0], tc[1], "a"); !errors.Is(err, ErrBadRange) {
			t.Errorf("AcquireAt(%d, %d) = %v, want ErrBadRange", tc[0], tc[1], err)
		}
	}
	if s := p.Stats(); s.Free != 4 {
		t.Fatalf("a refused request changed the pool: %+v", s)
	}
}

func TestAcquireAtConflicts(t *testing.T) {
	p := newPool(t, 8)
	if err := p.AcquireAt(2, 3, "a"); err != nil {
		t.Fatalf("AcquireAt(2,3): %v", err)
	}
	for _, tc := range [][2]int{{0, 3}, {4, 1}, {4, 4}, {1, 7}, {2, 1}} {
		if err := p.AcquireAt(tc[0], tc[1], "b"); !errors.Is(err, ErrSlotsBusy) {
			t.Errorf("AcquireAt(%d, %d) over a's run = %v, want ErrSlotsBusy", tc[0], tc[1], err)
		}
	}
	if s := p.Stats(); s.Free != 5 {
		t.Fatalf("a conflicting AcquireAt changed the pool: %+v", s)
	}
	if err := p.AcquireAt(5, 3, "b"); err != nil {
		t.Fatalf("AcquireAt adjacent to a: %v", err)
	}
	if err := p.AcquireAt(0, 2, "c"); err != nil {
		t.Fatalf("AcquireAt(0,2): %v", err)
	}
	// Acquire-at runs are released by their first slot like any other.
	if err := p.Release(3); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Release inside a's run = %v, want ErrNotHeld", err)
	}
	if err := p.Release(2); err != nil {
		t.Fatal(err)
	}
	if got, err := p.Acquire(3, "d"); err != nil || got != 2 {
		t.Fatalf("Acquire(3) into a's old run = %d, %v; want 2", got, err)
	}
}

func TestStatsFragmentation(t *testing.T) {
	p := newPool(t, 8)
	var firsts []int
	for i := 0; i < 8; i++ {
		f, err := p.Acquire(1, fmt.Sprint("w", i))
		if err != nil {
			t.Fatal(err)
		}
		firsts = append(firsts, f)
	}
	if s := p.Stats(); s != (PoolStats{Slots: 8}) {
		t.Fatalf("full pool Stats() = %+v, want no free slots and zero fragmentation", s)
	}
	// Free every other slot: 4 free, none adjacent.
	for i := 0; i < 8; i += 2 {
		if err := p.Release(firsts[i]); err != nil {
			t.Fatal(err)
		}
	}
	s := p.Stats()
	if s.Free != 4 || s.LargestFreeRun != 1 || math.Abs(s.Fragmentation-0.75) > 1e-9 {
		t.Fatalf("checkerboard Stats() = %+v, want 4 free, largest run 1, fragmentation 0.75", s)
	}
	if _, err := p.Acquire(2, "big"); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("Acquire(2) on a checkerboard = %v, want ErrNoRoom", err)
	}
	// Free slot 1 too: slots 0..2 become one run of 3, with slots 4 and 6 apart.
	if err := p.Release(firsts[1]); err != nil {
		t.Fatal(err)
	}
	s = p.Stats()
	if s.Free != 5 || s.LargestFreeRun != 3 || math.Abs(s.Fragmentation-0.4) > 1e-9 {
		t.Fatalf("Stats() = %+v, want 5 free, largest run 3, fragmentation 0.4", s)
	}
}

// TestConcurrentAcquire hammers one pool from 8 goroutines and checks that
// no slot is ever held by two owners at once.
func TestConcurrentAcquire(t *testing.T) {
	p := newPool(t, 64)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		held  = make(map[int]string) // slot -> owner, as the goroutines believe
		fails []string
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				owner := fmt.Sprintf("g%d-%d", g, i)
				k := 1 + (g+i)%4
				first, err := p.Acquire(k, owner)
				if errors.Is(err, ErrNoRoom) {
					continue
				}
				if err != nil {
					mu.Lock()
					fails = append(fails, err.Error())
					mu.Unlock()
					return
				}
				mu.Lock()
				for s := first; s < first+k; s++ {
					if prev, ok := held[s]; ok {
						fails = append(fails, fmt.Sprintf("slot %d given to %s while %s holds it", s, owner, prev))
					}
					held[s] = owner
				}
				mu.Unlock()
				for s := first; s < first+k; s++ {
					if got := p.Owner(s); got != owner {
						mu.Lock()
						fails = append(fails, fmt.Sprintf("Owner(%d) = %q, want %q", s, got, owner))
						mu.Unlock()
					}
				}
				mu.Lock()
				for s := first; s < first+k; s++ {
					delete(held, s)
				}
				mu.Unlock()
				if err := p.Release(first); err != nil {
					mu.Lock()
					fails = append(fails, err.Error())
					mu.Unlock()
				}
			}
		}(g)
	}
	wg.Wait()
	if len(fails) > 0 {
		t.Fatalf("%d failures, first: %s", len(fails), fails[0])
	}
	if s := p.Stats(); s.Free != 64 || s.LargestFreeRun != 64 {
		t.Fatalf("pool not empty after all releases: %+v", s)
	}
}
