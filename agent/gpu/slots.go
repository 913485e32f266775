package gpu

import (
	"errors"
	"fmt"
	"sync"
)

// MaxSlots bounds one GPU's pool. Real pools have tens to a few hundred
// slots; a count beyond this means the slot size was mistyped (bytes for
// MiB), and refusing it beats allocating a huge table.
const MaxSlots = 4096

// Errors callers test with errors.Is; returned errors wrap them with details.
var (
	// ErrNoRoom: no run of that many contiguous free slots exists right now.
	ErrNoRoom = errors.New("gpu: no room")
	// ErrSlotsBusy: AcquireAt asked for a slot another owner holds.
	ErrSlotsBusy = errors.New("gpu: slots busy")
	// ErrNotHeld: Release named a slot that does not start a held run.
	ErrNotHeld = errors.New("gpu: slot not held")
	// ErrBadRange: a slot index or count outside the pool, or an empty owner.
	ErrBadRange = errors.New("gpu: bad slot range")
)

// SlotPool is one GPU's usable memory split into equal slots. A worker holds
// a run of k contiguous slots (its memory must be one span of the budget, not
// scattered pieces) identified by its first slot. The pool is bookkeeping
// only; it is safe for concurrent use.
type SlotPool struct {
	gpu       int
	slotBytes uint64

	mu     sync.Mutex
	owner  []string // per slot; "" means free
	runLen []int    // at a held run's first slot, its length; 0 elsewhere
	free   int
}

// PoolStats summarizes a pool. Fragmentation is 1 - LargestFreeRun/Free: 0
// when all free slots are one run (or none are free), near 1 when free
// memory is scattered in runs too short to hold a large worker.
type PoolStats struct {
	Slots          int
	Free           int
	LargestFreeRun int
	Fragmentation  float64
}

// Run is one held run of slots.
type Run struct {
	First int
	Count int
	Owner string
}

// slotCount is the one formula for how many slots a device holds, shared by
// NewSlotPool and Device.ToProto so the coordinator sees the agent's pools.
func slotCount(capacity, reserve, slotBytes uint64) (int, error) {
	if slotBytes == 0 {
		return 0, errors.New("slot size must be greater than zero")
	}
	if reserve >= capacity {
		return 0, fmt.Errorf("reserve of %d bytes leaves nothing of %d bytes for slots", reserve, capacity)
	}
	n := (capacity - reserve) / slotBytes
	if n == 0 {
		return 0, fmt.Errorf("slot size %d bytes is larger than the %d usable bytes", slotBytes, capacity-reserve)
	}
	if n > MaxSlots {
		return 0, fmt.Errorf("%d slots of %d bytes is more than %d; use a larger slot size", n, slotBytes, MaxSlots)
	}
	return int(n), nil
}

// NewSlotPool carves capacity-reserve bytes of GPU gpu into slots of
// slotBytes; the remainder below one slot is left unused.
func NewSlotPool(gpu int, capacity, reserve, slotBytes uint64) (*SlotPool, error) {
	n, err := slotCount(capacity, reserve, slotBytes)
	if err != nil {
		return nil, fmt.Errorf("gpu: slot pool for GPU %d: %s", gpu, err)
	}
	return &SlotPool{
		gpu:       gpu,
		slotBytes: slotBytes,
		owner:     make([]string, n),
		runLen:    make([]int, n),
		free:      n,
	}, nil
}

// GPU is the index of the device the pool describes.
func (p *SlotPool) GPU() int { return p.gpu }

// Slots is the number of slots in the pool.
func (p *SlotPool) Slots() int { return len(p.owner) }

// SlotBytes is the size of one slot.
func (p *SlotPool) SlotBytes() uint64 { return p.slotBytes }

// checkRun validates a request for k slots from first (first < 0: anywhere).
func (p *SlotPool) checkRun(first, k int, owner string) error {
	if owner == "" {
		return fmt.Errorf("%w: GPU %d: an owner is required", ErrBadRange, p.gpu)
	}
	if k < 1 || k > len(p.owner) {
		return fmt.Errorf("%w: GPU %d: %d slots requested, the pool has %d", ErrBadRange, p.gpu, k, len(p.owner))
	}
	if first >= 0 && first > len(p.owner)-k {
		return fmt.Errorf("%w: GPU %d: slots %d..%d, the pool has 0..%d", ErrBadRange, p.gpu, first, first+k-1, len(p.owner)-1)
	}
	return nil
}

// Acquire holds the first run of k contiguous free slots for owner and
// returns its first slot, or ErrNoRoom.
func (p *SlotPool) Acquire(k int, owner string) (int, error) {
	if err := p.checkRun(-1, k, owner); err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	start, length := 0, 0
	for i, o := range p.owner {
		if o != "" {
			length = 0
			continue
		}
		if length == 0 {
			start = i
		}
		length++
		if length == k {
			p.hold(start, k, owner)
			return start, nil
		}
	}
	return 0, fmt.Errorf("%w: GPU %d: %d contiguous slots needed, largest free run is %d of %d free",
		ErrNoRoom, p.gpu, k, p.largestFreeRun(), p.free)
}

// AcquireAt holds slots first..first+k-1 for owner: the scheduler has already
// chosen them, so any of them being held is ErrSlotsBusy, not a search.
func (p *SlotPool) AcquireAt(first, k int, owner string) error {
	if first < 0 {
		return fmt.Errorf("%w: GPU %d: slot %d is negative", ErrBadRange, p.gpu, first)
	}
	if err := p.checkRun(first, k, owner); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := first; i < first+k; i++ {
		if o := p.owner[i]; o != "" {
			return fmt.Errorf("%w: GPU %d: slot %d is held by %q", ErrSlotsBusy, p.gpu, i, o)
		}
	}
	p.hold(first, k, owner)
	return nil
}

func (p *SlotPool) hold(first, k int, owner string) {
	for i := first; i < first+k; i++ {
		p.owner[i] = owner
	}
	p.runLen[first] = k
	p.free -= k
}

// Release frees the run that starts at first.
func (p *SlotPool) Release(first int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if first < 0 || first >= len(p.owner) || p.runLen[first] == 0 {
		return fmt.Errorf("%w: GPU %d: no held run starts at slot %d", ErrNotHeld, p.gpu, first)
	}
	k := p.runLen[first]
	for i := first; i < first+k; i++ {
		p.owner[i] = ""
	}
	p.runLen[first] = 0
	p.free += k
	return nil
}

// Owner returns who holds slot, or "" when it is free or out of range.
func (p *SlotPool) Owner(slot int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if slot < 0 || slot >= len(p.owner) {
		return ""
	}
	return p.owner[slot]
}

// Runs lists the held runs in slot order.
func (p *SlotPool) Runs() []Run {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Run
	for i, k := range p.runLen {
		if k > 0 {
			out = append(out, Run{First: i, Count: k, Owner: p.owner[i]})
		}
	}
	return out
}

// Stats returns the pool's current occupancy and fragmentation.
func (p *SlotPool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := PoolStats{Slots: len(p.owner), Free: p.free, LargestFreeRun: p.largestFreeRun()}
	if s.Free > 0 {
		s.Fragmentation = 1 - float64(s.LargestFreeRun)/float64(s.Free)
	}
	return s
}

func (p *SlotPool) largestFreeRun() int {
	best, length := 0, 0
	for _, o := range p.owner {
		if o != "" {
			length = 0
			continue
		}
		length++
		best = max(best, length)
	}
	return best
}
