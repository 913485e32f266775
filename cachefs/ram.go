package cachefs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// RAMConfig sizes a RAMTier.
type RAMConfig struct {
	// MaxBytes is the most host memory the tier's blobs may hold. It must be
	// set, and leave room for workers, jobs and the page cache.
	MaxBytes int64
	// Logger receives the tier's events; nil means the Store's logger.
	Logger *slog.Logger
	// SkipVerify skips rehashing a blob as it is brought into memory. The
	// hash costs about a core-second per 1.7 GB, mostly hidden behind the
	// disk read; skipping it trusts the disk tier's bytes.
	SkipVerify bool
	// Metrics receives the tier's counters (tier="ram"); nil records none.
	Metrics *Metrics

	// noMlock makes the tier behave as if mlock were refused, so tests run
	// the page-cache fallback on hosts where mlock works.
	noMlock bool
}

// RAMBlob describes one blob resident in a RAMTier.
type RAMBlob struct {
	Digest proto.Digest
	Size   int64
	// Locked is true when the blob's pages are mlocked; false when they are
	// only in the page cache, which the kernel may drop under pressure.
	Locked   bool
	LastUsed time.Time
	// Readers counts Acquires not yet released.
	Readers int
}

// RAMTier holds hot blobs of a Store resident in host memory, within a byte
// budget, so a worker loads them at memory speed instead of disk speed. See
// "RAM tier" in the package comment. It is safe for concurrent use.
type RAMTier struct {
	s       *Store
	max     int64
	log     *slog.Logger
	metrics *Metrics
	verify  bool
	noMlock bool
	chunk   int // ramChunk; smaller in tests

	flights  flightGroup // one promotion per digest at a time
	closing  chan struct{}
	active   sync.WaitGroup // promotions under way, which Close waits for
	lockWarn sync.Once
	lockOK   atomic.Bool
	mapped   atomic.Int64 // blobs brought in since NewRAMTier

	mu     sync.Mutex
	blobs  map[proto.Digest]*ramBlob
	used   int64 // resident bytes plus those reserved by promotions under way
	closed bool
}

type ramBlob struct {
	data     []byte // the mapping; empty, not nil, for the empty blob
	locked   bool
	lastUsed time.Time
	refs     int  // Acquires not yet released
	read     bool // acquired since it was promoted
	gone     bool // left the index while acquired; unmapped at the last release
	unpin    func()
}

// ramChunk is how much is locked (or faulted in) and hashed per step: large
// enough for syscall costs not to matter, small enough that cancelling a
// promotion of a 24 GB blob takes effect quickly.
const ramChunk = 64 << 20

// NewRAMTier returns an empty RAM tier over s. It checks once whether this
// process may lock memory and, if not, warns that blobs will only be kept in
// the page cache.
func NewRAMTier(s *Store, cfg RAMConfig) (*RAMTier, error) {
	if s == nil {
		return nil, errors.New("cachefs: NewRAMTier: the Store is nil")
	}
	if cfg.MaxBytes <= 0 {
		return nil, fmt.Errorf("cachefs: RAMConfig.MaxBytes is %d: set the RAM tier's budget in bytes, below the host's free memory", cfg.MaxBytes)
	}
	t := &RAMTier{
		s:       s,
		max:     cfg.MaxBytes,
		log:     cfg.Logger,
		verify:  !cfg.SkipVerify,
		noMlock: cfg.noMlock,
		chunk:   ramChunk,
		closing: make(chan struct{}),
		blobs:   make(map[proto.Digest]*ramBlob),
	}
	if t.log == nil {
		t.log = s.log
	}
	t.log = t.log.With("tier", "ram")
	t.metrics = cfg.Metrics
	t.metrics.watch(tierRAM, t.Usage)
	err := errors.New("disabled for this test")
	if !t.noMlock {
		err = probeLock()
	}
	if err != nil {
		t.lockRefused(err)
	} else {
		t.lockOK.Store(true)
	}
	return t, nil
}

// lockRefused records that mlock failed and warns the first time.
func (t *RAMTier) lockRefused(err error) {
	t.lockOK.Store(false)
	t.lockWarn.Do(func() {
		t.log.Warn("cannot lock blobs in memory; the RAM tier keeps them in the page cache instead, where the kernel may drop them under memory pressure and a load may read the disk again. "+
			"To lock them, set LimitMEMLOCK=infinity in the agent's systemd unit (or raise ulimit -l above the RAM budget)",
			"err", err, "rlimit_memlock", memlockLimit(), "budget", t.max)
	})
}

// Locked reports whether the tier can lock blobs in memory here: false once
// mlock was refused (the last attempt decides), true while it works.
func (t *RAMTier) Locked() bool { return t.lockOK.Load() }

// Promote brings d's blob into memory, pins it in the Store so the disk tier
// keeps it while it is resident, and rehashes it on the way (unless
// SkipVerify). A blob whose bytes no longer match d is dropped from the
// Store, so the next Fetch downloads it again, and Promote fails with
// ErrDigestMismatch. To make room it demotes blobs no one has acquired,
// least recently used first; if that is not enough it fails with
// ErrNoSpace, and a blob over the whole budget with ErrTooLarge. A blob not
// in the Store fails with ErrNotCached. Concurrent Promotes of one digest
// share one promotion, which goes on while any of them still waits.
func (t *RAMTier) Promote(ctx context.Context, d proto.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cachefs: promote: %w", err)
	}
	if done, err := t.resident(d); done || err != nil {
		return err
	}
	_, err := t.flights.do(ctx, string(d), func(ctx context.Context) (fetchResult, error) {
		return fetchResult{}, t.promote(ctx, d)
	})
	if ctxErr := ctx.Err(); err != nil && ctxErr != nil && errors.Is(err, ctxErr) {
		return fmt.Errorf("cachefs: promote %s: %w", d, err)
	}
	return err
}

// resident reports whether d is already in memory, marking it used.
func (t *RAMTier) resident(d proto.Digest) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.residentLocked(d)
}

// promote runs once per digest at a time (see flightGroup).
func (t *RAMTier) promote(ctx context.Context, d proto.Digest) (err error) {
	t.mu.Lock()
	if done, err := t.residentLocked(d); done || err != nil {
		t.mu.Unlock()
		return err
	}
	t.active.Add(1)
	t.mu.Unlock()
	defer t.active.Done()

	start := time.Now()
	unpin, err := t.s.Pin(d)
	if errors.Is(err, ErrNotCached) {
		return fmt.Errorf("cachefs: promote %s: fetch it to disk first: %w", d, ErrNotCached)
	}
	if err != nil {
		return fmt.Errorf("cachefs: promote %s: %w", d, err)
	}
	defer func() {
		if err != nil {
			unpin()
		}
	}()
	e := t.s.entryOf(d) // the entry hashed, in case a bad blob must be dropped
	p, ok := t.s.Path(d)
	if e == nil || !ok {
		return fmt.Errorf("cachefs: promote %s: it left the disk tier; fetch it again: %w", d, ErrNotCached)
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("cachefs: promote %s: %w", d, err)
	}
	defer f.Close() // the mapping outlives the descriptor
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("cachefs: promote %s: %w", d, err)
	}
	size := fi.Size()
	if size > t.max {
		return fmt.Errorf("cachefs: promote %s: its %d bytes exceed the RAM tier's whole budget of %d; raise the budget or load it from disk: %w", d, size, t.max, ErrTooLarge)
	}
	if int64(int(size)) != size {
		return fmt.Errorf("cachefs: promote %s: %d bytes cannot be mapped on this platform", d, size)
	}
	if err := t.reserve(d, size); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			t.mu.Lock()
			t.used -= size
			t.mu.Unlock()
		}
	}()

	data := []byte{}
	if size > 0 {
		if data, err = mapFile(f, int(size)); err != nil {
			return fmt.Errorf("cachefs: promote %s: map %s: %w", d, p, err)
		}
	}
	locked, got, err := t.bringIn(ctx, data)
	if err != nil {
		err = fmt.Errorf("cachefs: promote %s: %w", d, err)
	} else if t.verify && got != d {
		t.s.dropCorrupt(d, e, got, "promote to RAM")
		err = fmt.Errorf("cachefs: promote %s: %s holds %d bytes that hash to %s; dropped it from the cache, fetch it again: %w", d, p, size, got, ErrDigestMismatch)
	}
	if err == nil {
		t.mu.Lock()
		if t.closed {
			err = fmt.Errorf("cachefs: promote %s: the RAM tier closed meanwhile: %w", d, ErrClosed)
		} else {
			t.blobs[d] = &ramBlob{data: data, locked: locked, lastUsed: t.s.now(), unpin: unpin}
		}
		t.mu.Unlock()
	}
	if err != nil {
		t.metrics.failed(tierRAM, failureReason(err))
		if size > 0 {
			if uerr := unmapFile(data); uerr != nil {
				t.log.Error("cannot unmap blob; its memory stays mapped", "blob", d.Short(), "err", uerr)
			}
		}
		return err
	}
	t.mapped.Add(1)
	t.metrics.fetched(tierRAM, "disk", size, time.Since(start))
	secs := time.Since(start).Seconds()
	t.log.Info("promoted blob to RAM", "blob", d.Short(), "size", size, "locked", locked, "verified", t.verify,
		"seconds", secs, "gb_per_s", float64(size)/1e9/max(secs, 1e-9))
	return nil
}

func (t *RAMTier) residentLocked(d proto.Digest) (bool, error) {
	if t.closed {
		return false, fmt.Errorf("cachefs: promote %s: the RAM tier is closed: %w", d, ErrClosed)
	}
	if rb, ok := t.blobs[d]; ok {
		rb.lastUsed = t.s.now()
		return true, nil
	}
	return false, nil
}

// reserve counts size bytes against the budget for d, demoting blobs no
// one has acquired, least recently used first, to make room. It demotes
// nothing if that would not be enough.
func (t *RAMTier) reserve(d proto.Digest, size int64) error {
	t.mu.Lock()
	need := t.used + size - t.max
	var victims []proto.Digest
	if need > 0 {
		type cand struct {
			d proto.Digest
			*ramBlob
		}
		var cands []cand
		for cd, rb := range t.blobs {
			if rb.refs == 0 {
				cands = append(cands, cand{cd, rb})
			}
		}
		slices.SortFunc(cands, func(a, b cand) int {
			if c := a.lastUsed.Compare(b.lastUsed); c != 0 {
				return c
			}
			return strings.Compare(string(a.d), string(b.d))
		})
		var freed int64
		for _, c := range cands {
			if freed >= need {
				break
			}
			victims = append(victims, c.d)
			freed += int64(len(c.data))
		}
		if freed < need {
			used := t.used
			t.mu.Unlock()
			return fmt.Errorf("cachefs: promote %s (%d bytes): %d of the RAM tier's %d bytes are held by readers or promotions under way; retry when they release them, or raise the RAM budget: %w",
				d, size, used-freed, t.max, ErrNoSpace)
		}
	}
	gone := make([]*ramBlob, 0, len(victims))
	var demoted int64
	for _, v := range victims {
		gone = append(gone, t.blobs[v])
		demoted += int64(len(t.blobs[v].data))
		t.used -= int64(len(t.blobs[v].data))
		delete(t.blobs, v)
	}
	t.used += size
	t.mu.Unlock()
	t.metrics.eviction(tierRAM, len(victims), demoted)
	for i, v := range victims {
		t.log.Info("demoted blob from RAM to make room", "blob", v.Short(), "size", len(gone[i].data), "for", d.Short())
		t.unmap(v, gone[i])
	}
	return nil
}

// bringIn faults b's pages in, locking them where mlock is allowed, and
// hashes them. A helper goroutine locks (or touches) chunks ahead of the
// hashing, so reading the disk overlaps hashing instead of adding to it.
// Locking before hashing means the bytes verified are the bytes that stay.
func (t *RAMTier) bringIn(ctx context.Context, b []byte) (locked bool, got proto.Digest, err error) {
	h := sha256.New()
	if len(b) == 0 {
		return true, proto.DigestFromSum(h.Sum(nil)), nil
	}
	adviseWillNeed(b)
	ready := make(chan int, 2) // offsets of chunks in memory, up to two ahead
	quit := make(chan struct{})
	locked = !t.noMlock
	var lockErr, faultErr error
	var sink byte
	go func() {
		defer close(ready)
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer catchFault(&faultErr)
		for off := 0; off < len(b); off += t.chunk {
			c := b[off:min(off+t.chunk, len(b))]
			if locked {
				if err := lockMem(c); err != nil {
					// Keep the blob, in the page cache only.
					_ = unlockMem(b[:off])
					locked, lockErr = false, err
				}
			}
			if !locked {
				sink ^= touch(c)
			}
			select {
			case ready <- off:
			case <-quit:
				return
			}
		}
	}()
	stop := func() {
		close(quit)
		for range ready { // wait for the helper: b must not be unmapped under it
		}
	}

	err = t.hashChunks(ctx, b, ready, h)
	if err != nil {
		stop()
		return false, "", err
	}
	if faultErr != nil {
		return false, "", faultErr
	}
	if t.noMlock {
		t.lockRefused(errors.New("mlock disabled for this test"))
	} else if lockErr != nil {
		t.lockRefused(lockErr)
	} else {
		t.lockOK.Store(true)
	}
	_ = sink
	return locked, proto.DigestFromSum(h.Sum(nil)), nil
}

// hashChunks hashes each chunk of b as the helper reports it in memory.
func (t *RAMTier) hashChunks(ctx context.Context, b []byte, ready <-chan int, h interface{ Write([]byte) (int, error) }) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer catchFault(&err)
	for off := range ready {
		if err := ctx.Err(); err != nil {
			return err
		}
		select {
		case <-t.closing:
			return fmt.Errorf("the RAM tier closed: %w", ErrClosed)
		default:
		}
		if t.verify {
			h.Write(b[off:min(off+t.chunk, len(b))])
		}
	}
	return nil
}

// touch reads one byte of each page of b, faulting the pages in.
func touch(b []byte) byte {
	var x byte
	for i := 0; i < len(b); i += os.Getpagesize() {
		x ^= b[i]
	}
	return x
}

// catchFault turns a fault on a mapped blob (the disk could not supply a
// page, which would otherwise be SIGBUS and the end of the agent) into an
// error. It must be deferred, after debug.SetPanicOnFault(true).
func catchFault(err *error) {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		*err = fmt.Errorf("reading the mapped blob faulted at %#x: the disk could not supply a page; check the disk: %v", f.Addr(), r)
		return
	}
	panic(r)
}

// Acquire returns d's resident bytes and holds them in memory until release
// is called; the bytes must not be used after that. It reports ok false,
// with a no-op release, if d is not resident. Acquires nest; release is
// idempotent. Each Acquire and release counts as a use for the LRU order.
func (t *RAMTier) Acquire(d proto.Digest) (b []byte, release func(), ok bool) {
	t.mu.Lock()
	rb, ok := t.blobs[d]
	t.metrics.lookup(tierRAM, ok && !t.closed)
	if !ok || t.closed {
		t.mu.Unlock()
		return nil, func() {}, false
	}
	t.metrics.served(tierRAM, int64(len(rb.data)))
	rb.refs++
	rb.read = true
	rb.lastUsed = t.s.now()
	t.mu.Unlock()
	var once sync.Once
	return rb.data, func() { once.Do(func() { t.release(d, rb) }) }, true
}

func (t *RAMTier) release(d proto.Digest, rb *ramBlob) {
	t.mu.Lock()
	rb.refs--
	free := rb.refs == 0 && rb.gone
	if !rb.gone {
		rb.lastUsed = t.s.now()
	}
	t.mu.Unlock()
	if free {
		t.unmap(d, rb)
	}
}

// Has reports whether d is resident.
func (t *RAMTier) Has(d proto.Digest) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.blobs[d]
	return ok && !t.closed
}

// Demote drops d from memory and unpins it; it stays on disk. It refuses a
// blob someone has acquired with ErrPinned.
func (t *RAMTier) Demote(d proto.Digest) error {
	t.mu.Lock()
	rb, ok := t.blobs[d]
	if !ok {
		t.mu.Unlock()
		return fmt.Errorf("cachefs: demote %s: not in the RAM tier: %w", d, ErrNotCached)
	}
	if rb.refs > 0 {
		n := rb.refs
		t.mu.Unlock()
		return fmt.Errorf("cachefs: demote %s: %d reader(s) hold it; retry after they release it: %w", d, n, ErrPinned)
	}
	delete(t.blobs, d)
	t.used -= int64(len(rb.data))
	t.mu.Unlock()
	t.unmap(d, rb)
	t.log.Info("demoted blob from RAM", "blob", d.Short(), "size", len(rb.data))
	return nil
}

// unmap releases a blob that has left the index and has no readers.
func (t *RAMTier) unmap(d proto.Digest, rb *ramBlob) {
	if len(rb.data) > 0 {
		if err := unmapFile(rb.data); err != nil {
			t.log.Error("cannot unmap blob; its memory stays mapped", "blob", d.Short(), "err", err)
		}
	}
	rb.data = nil
	rb.unpin()
	if rb.read {
		// Carry its use down to the disk tier's LRU order, which saw none
		// while the blob was resident, so it does not leave disk next.
		t.s.Path(d)
	}
}

// List returns the resident blobs, sorted by digest.
func (t *RAMTier) List() []RAMBlob {
	t.mu.Lock()
	out := make([]RAMBlob, 0, len(t.blobs))
	for d, rb := range t.blobs {
		out = append(out, RAMBlob{Digest: d, Size: int64(len(rb.data)), Locked: rb.locked, LastUsed: rb.lastUsed, Readers: rb.refs})
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b RAMBlob) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	return out
}

// Usage returns the bytes resident or being promoted, and the budget.
func (t *RAMTier) Usage() (used, max int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.used, t.max
}

// Close stops promotions under way, waits for them, and demotes every
// blob. A blob still acquired is unmapped at its last release, so bytes
// handed out stay valid until then. The Store stays open.
func (t *RAMTier) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.closing)
	t.mu.Unlock()
	t.active.Wait()

	t.mu.Lock()
	var free []proto.Digest
	gone := make(map[proto.Digest]*ramBlob)
	for d, rb := range t.blobs {
		delete(t.blobs, d)
		t.used -= int64(len(rb.data))
		if rb.refs > 0 {
			rb.gone = true
			continue
		}
		free = append(free, d)
		gone[d] = rb
	}
	t.mu.Unlock()
	for _, d := range free {
		t.unmap(d, gone[d])
	}
	return nil
}
