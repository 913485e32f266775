package cachefs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// ScrubOptions bounds how much a scrub pass may take from the disk.
type ScrubOptions struct {
	// BytesPerSecond caps how fast a pass reads, so it leaves the disk's
	// bandwidth to jobs loading models; 0 means as fast as the disk goes.
	BytesPerSecond int64
	// MaxBytes ends a pass before a blob that would take it past this many
	// bytes read (a pass always checks at least one blob); 0 means every
	// blob. Under ScrubEvery the next pass starts with the blobs checked
	// least recently, so every blob is reached in turn.
	MaxBytes int64
}

func (o ScrubOptions) validate() error {
	if o.BytesPerSecond < 0 || o.MaxBytes < 0 {
		return fmt.Errorf("cachefs: scrub: BytesPerSecond %d and MaxBytes %d must not be negative; 0 means no limit", o.BytesPerSecond, o.MaxBytes)
	}
	return nil
}

// ScrubReport says what a scrub pass found.
type ScrubReport struct {
	Checked int   // blobs rehashed in full
	Bytes   int64 // bytes read
	// Corrupt lists blobs whose bytes no longer matched their digest; they
	// were dropped, and the next Fetch downloads them again.
	Corrupt []proto.Digest
	// Unreadable lists blobs the disk could not read; they are kept (the
	// error may be passing) and logged.
	Unreadable []proto.Digest
	Missing    int // blobs evicted or removed before the pass reached them
	Remaining  int // blobs left for a later pass by MaxBytes
	Elapsed    time.Duration
}

// Scrub rehashes every cached blob, in digest order, reading the disk
// itself rather than the page cache where the file system allows, and drops
// each one whose bytes no longer match its digest, pinned or not (like
// Verify). It returns early only when ctx ends or the Store closes; a blob
// it cannot read is reported and skipped.
func (s *Store) Scrub(ctx context.Context, opts ScrubOptions) (ScrubReport, error) {
	return s.scrub(ctx, opts, nil, 0)
}

// ScrubEvery runs a scrub pass every interval (the first one interval after
// it starts, to leave a starting agent's disk to its first jobs) until ctx
// ends or the Store closes, and returns why it stopped. Passes start with
// the blobs it checked least recently. Run it on its own goroutine.
func (s *Store) ScrubEvery(ctx context.Context, interval time.Duration, opts ScrubOptions) error {
	if interval <= 0 {
		return fmt.Errorf("cachefs: scrub interval is %s: use a positive interval, e.g. 24h", interval)
	}
	if err := opts.validate(); err != nil {
		return err
	}
	checked := make(map[proto.Digest]uint64) // blob → the pass that last checked it
	for pass := uint64(1); ; pass++ {
		if err := s.sleep(ctx, interval); err != nil {
			return err
		}
		if _, err := s.scrub(ctx, opts, checked, pass); err != nil {
			return err
		}
	}
}

// scrub runs one pass. checked, if not nil, orders the blobs (never checked
// first, then by the pass that last checked them) and is updated with pass.
func (s *Store) scrub(ctx context.Context, opts ScrubOptions, checked map[proto.Digest]uint64, pass uint64) (ScrubReport, error) {
	var rep ScrubReport
	if err := opts.validate(); err != nil {
		return rep, err
	}
	start := time.Now()
	blobs := s.List()
	if checked != nil {
		cached := make(map[proto.Digest]bool, len(blobs))
		for _, b := range blobs {
			cached[b.Digest] = true
		}
		for d := range checked {
			if !cached[d] {
				delete(checked, d)
			}
		}
		slices.SortStableFunc(blobs, func(a, b BlobInfo) int {
			switch ca, cb := checked[a.Digest], checked[b.Digest]; {
			case ca < cb:
				return -1
			case ca > cb:
				return 1
			}
			return strings.Compare(string(a.Digest), string(b.Digest))
		})
	}
	pace := &pacer{rate: opts.BytesPerSecond, start: start, now: time.Now, sleep: s.sleep}
	buf := scrubBuf(copyBufSize)
	for i, b := range blobs {
		if opts.MaxBytes > 0 && rep.Bytes > 0 && rep.Bytes+b.Size > opts.MaxBytes {
			rep.Remaining = len(blobs) - i
			break
		}
		n, err := s.scrubBlob(ctx, b.Digest, buf, pace)
		rep.Bytes += n
		switch {
		case err == nil:
			rep.Checked++
		case errors.Is(err, ErrNotCached):
			rep.Missing++
		case errors.Is(err, ErrDigestMismatch):
			rep.Corrupt = append(rep.Corrupt, b.Digest)
		case ctx.Err() != nil || errors.Is(err, ErrClosed):
			rep.Elapsed = time.Since(start)
			return rep, fmt.Errorf("cachefs: scrub stopped after %d blobs: %w", rep.Checked, err)
		default:
			rep.Unreadable = append(rep.Unreadable, b.Digest)
			s.log.Error("cannot read blob to scrub it; check the disk", "blob", b.Digest.Short(), "err", err)
		}
		if checked != nil {
			checked[b.Digest] = pass
		}
	}
	rep.Elapsed = time.Since(start)
	secs := rep.Elapsed.Seconds()
	s.log.Info("scrubbed cache", "checked", rep.Checked, "bytes", rep.Bytes, "corrupt", len(rep.Corrupt),
		"unreadable", len(rep.Unreadable), "remaining", rep.Remaining, "seconds", secs,
		"mb_per_s", float64(rep.Bytes)/1e6/max(secs, 1e-9))
	return rep, nil
}

// scrubBlob rehashes d's blob and drops it if it does not match. It reports
// ErrNotCached for a blob that left the cache before it was reached.
func (s *Store) scrubBlob(ctx context.Context, d proto.Digest, buf []byte, pace *pacer) (int64, error) {
	if err := s.begin(); err != nil {
		return 0, err
	}
	defer s.active.Done()
	e := s.entryOf(d)
	if e == nil {
		return 0, ErrNotCached
	}
	p := s.blobPath(d)
	n, got, err := s.hashFile(ctx, p, buf, pace)
	if errors.Is(err, fs.ErrNotExist) {
		return n, ErrNotCached
	}
	if err != nil {
		return n, fmt.Errorf("cachefs: scrub %s: %w", d, err)
	}
	if got != d {
		s.dropCorrupt(d, e, got, "scrub")
		return n, fmt.Errorf("cachefs: scrub %s: %s holds %d bytes that hash to %s; dropped it: %w", d, p, n, got, ErrDigestMismatch)
	}
	return n, nil
}

// hashFile hashes the file at p at the pace's rate. It reads with O_DIRECT
// where it can: a scrub should check what is on the disk, not pages cached
// when the blob was written, and should not push models that jobs are about
// to load out of the page cache.
func (s *Store) hashFile(ctx context.Context, p string, buf []byte, pace *pacer) (int64, proto.Digest, error) {
	direct := true
	for {
		f, err := openScrub(p, direct)
		if err != nil {
			return 0, "", err
		}
		n, got, err := s.hashOpen(ctx, f, buf, pace)
		f.Close()
		if direct && n == 0 && errors.Is(err, syscall.EINVAL) {
			direct = false // the file system takes O_DIRECT but not our alignment
			continue
		}
		return n, got, err
	}
}

func (s *Store) hashOpen(ctx context.Context, f *os.File, buf []byte, pace *pacer) (int64, proto.Digest, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	size := fi.Size()
	h := sha256.New()
	src := &cancelReader{ctx: ctx, stop: s.closing, r: f}
	var n int64
	for n < size {
		nr, err := src.Read(buf)
		if nr > 0 {
			h.Write(buf[:nr])
			n += int64(nr)
			if werr := pace.wait(ctx, nr); werr != nil {
				return n, "", werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, "", err
		}
	}
	return n, proto.DigestFromSum(h.Sum(nil)), nil
}

// entryOf returns d's index entry, or nil.
func (s *Store) entryOf(d proto.Digest) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blobs[d]
}

// dropCorrupt removes d's blob, pinned or not, after its bytes hashed to
// got, as Verify does. e is the entry that was hashed: a blob Put afresh
// meanwhile is kept. (Verify itself is not called: it would read the blob
// again through the page cache, which may still hold good pages of a disk
// that has gone bad.)
func (s *Store) dropCorrupt(d proto.Digest, e *entry, got proto.Digest, by string) {
	s.mu.Lock()
	var trash []string
	if !s.closed && e != nil && s.blobs[d] == e {
		trash = s.evictLocked([]proto.Digest{d})
	}
	s.mu.Unlock()
	s.emptyTrash(trash)
	s.log.Error("cached blob is corrupt; dropped it, the next fetch downloads it again", "blob", d.Short(), "got", got, "found_by", by)
}

// pacer spreads reads so that, on average since start, they stay at rate
// bytes per second.
type pacer struct {
	rate  int64 // 0: no limit
	start time.Time
	n     int64
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
}

func (p *pacer) wait(ctx context.Context, n int) error {
	if p.rate <= 0 {
		return nil
	}
	p.n += int64(n)
	due := p.start.Add(time.Duration(float64(p.n) / float64(p.rate) * float64(time.Second)))
	if d := due.Sub(p.now()); d > 0 {
		return p.sleep(ctx, d)
	}
	return nil
}
