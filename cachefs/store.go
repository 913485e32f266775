package cachefs

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Config says where a Store keeps its blobs and how much it may keep.
type Config struct {
	// Dir is the cache root; blobs live under Dir/blobs/sha256/<first 2
	// hex>/<hex>, temp files under Dir/tmp. See the package comment.
	Dir string
	// MaxBytes is the size budget for all blobs; 0 means unlimited.
	MaxBytes int64
	// Logger receives the store's events; nil means slog.Default().
	Logger *slog.Logger
	// Clock gives last-use times; nil means time.Now.
	Clock func() time.Time
	// FetchBackoff is the wait before re-downloading a blob whose bytes did
	// not match its digest; it doubles on each further retry. 0 means 200ms.
	FetchBackoff time.Duration
	// Metrics receives the cache's counters; nil records none.
	Metrics *Metrics

	// Peer fetches (see SetPeers). PeerParallel is how many chunks move at
	// once (default 8). PeerSettle is how long a new download waits, after
	// announcing itself, before it takes chunks from the origin, so hosts
	// that start together learn of each other and split the origin's
	// chunks instead of each reading all of them (default 500 ms, about two
	// gossip rounds). PeerStall is how long a download waits for a chunk
	// another host took from the origin before reading it from the origin
	// itself (default 5 s). PeerAvoid is how long a peer that sent bad
	// bytes or broke off is left out (default 30 s).
	PeerParallel int
	PeerSettle   time.Duration
	PeerStall    time.Duration
	PeerAvoid    time.Duration
}

var (
	// ErrDigestMismatch means bytes did not hash to the digest they were
	// offered as; they were not cached.
	ErrDigestMismatch = errors.New("cachefs: digest mismatch")
	// ErrPinned means a blob is in use by a job and may not be removed.
	ErrPinned = errors.New("cachefs: blob is pinned")
	// ErrNoSpace means the budget cannot be met because everything left in
	// the cache is pinned.
	ErrNoSpace = errors.New("cachefs: cache budget is full of pinned blobs")
	// ErrTooLarge means a blob is larger than the whole budget.
	ErrTooLarge = errors.New("cachefs: blob is larger than the cache budget")
	// ErrNotCached means the digest has no blob in this cache.
	ErrNotCached = errors.New("cachefs: blob is not cached")
	// ErrClosed means the Store was closed.
	ErrClosed = errors.New("cachefs: store is closed")
)

// BlobInfo describes one cached blob.
type BlobInfo struct {
	Digest   proto.Digest
	Size     int64
	LastUsed time.Time
	Pins     int
}

// Store is a content-addressed cache of blobs in one directory. It is safe
// for concurrent use. Its index lives in memory and is rebuilt from the
// directory by Open; the directory is the only truth.
type Store struct {
	dir, blobDir, tmpDir string
	max                  int64
	log                  *slog.Logger
	now                  func() time.Time
	backoff              time.Duration
	policy               policy
	lock                 *dirLock
	metrics              *Metrics

	peerCfg  peerConfig
	peers    atomic.Pointer[Peers]
	avoid    avoidList
	partMu   sync.Mutex
	partials map[proto.Digest]*chunkFetch // chunked downloads in progress

	closing  chan struct{} // closed by Close: stops copies and backoffs
	active   sync.WaitGroup
	flights  flightGroup
	trashSeq atomic.Uint64

	mu     sync.Mutex
	blobs  map[proto.Digest]*entry
	used   int64
	closed bool
}

type entry struct {
	size     int64
	lastUsed time.Time
	pins     int
}

// Open opens (creating if needed) the cache in cfg.Dir: it empties Dir/tmp,
// rebuilds the index by scanning the blobs, and evicts down to the budget if
// it shrank since the last run. Only one Store may have a directory open.
func Open(cfg Config) (*Store, error) { return openPolicy(cfg, defaultPolicy) }

// openPolicy is Open with the eviction policy newPolicy makes for the
// budget; tests use it to run against plain LRU.
func openPolicy(cfg Config, newPolicy func(maxBytes int64) policy) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cachefs: Config.Dir is empty: set the cache directory")
	}
	if cfg.MaxBytes < 0 {
		return nil, fmt.Errorf("cachefs: Config.MaxBytes is %d: use 0 for unlimited or a positive size", cfg.MaxBytes)
	}
	s := &Store{
		dir:     cfg.Dir,
		blobDir: filepath.Join(cfg.Dir, "blobs", "sha256"),
		tmpDir:  filepath.Join(cfg.Dir, "tmp"),
		max:     cfg.MaxBytes,
		log:     cfg.Logger,
		now:     cfg.Clock,
		backoff: cfg.FetchBackoff,
		policy:  newPolicy(cfg.MaxBytes),
		closing: make(chan struct{}),
		blobs:   make(map[proto.Digest]*entry),
		peerCfg: peerConfig{
			parallel: cmp.Or(cfg.PeerParallel, 8),
			settle:   cmp.Or(cfg.PeerSettle, 500*time.Millisecond),
			stall:    cmp.Or(cfg.PeerStall, 5*time.Second),
			avoidFor: cmp.Or(cfg.PeerAvoid, 30*time.Second),
		},
		partials: make(map[proto.Digest]*chunkFetch),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.metrics = cfg.Metrics
	s.metrics.watch(tierDisk, s.Usage)
	s.log = s.log.With("component", "cachefs")
	if s.now == nil {
		s.now = time.Now
	}
	if s.backoff <= 0 {
		s.backoff = 200 * time.Millisecond
	}
	for _, d := range []string{s.dir, s.blobDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cachefs: create %s: check the cache directory's path and permissions: %w", d, err)
		}
	}
	lock, err := lockDir(filepath.Join(s.dir, "LOCK"))
	if err != nil {
		return nil, err
	}
	s.lock = lock
	if err := s.clearTmp(); err != nil {
		lock.release()
		return nil, err
	}
	if err := s.scan(); err != nil {
		lock.release()
		return nil, err
	}
	s.seedPolicy()
	if s.max > 0 && s.used > s.max {
		s.log.Warn("cache is over its budget; evicting", "used", s.used, "max", s.max)
		s.mu.Lock()
		victims, _ := s.chooseVictims(s.used - s.max)
		trash := s.evictLocked(victims)
		s.mu.Unlock()
		s.emptyTrash(trash)
	}
	s.log.Info("cache opened", "dir", s.dir, "blobs", len(s.blobs), "used", s.used, "max", s.max)
	return s, nil
}

// clearTmp deletes whatever a previous run left in tmp/: partial writes cut
// short by a crash, and evicted blobs not yet unlinked.
func (s *Store) clearTmp() error {
	ents, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("cachefs: read %s: %w", s.tmpDir, err)
	}
	for _, e := range ents {
		p := filepath.Join(s.tmpDir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("cachefs: remove leftover temp file %s: remove it by hand or fix its permissions: %w", p, err)
		}
		s.log.Info("removed leftover temp file", "path", p)
	}
	return nil
}

// scan rebuilds the index from blobs/. It checks names, types and (for the
// empty case) sizes, never contents: see "Open" in the package comment.
func (s *Store) scan() error {
	shards, err := os.ReadDir(s.blobDir)
	if err != nil {
		return fmt.Errorf("cachefs: read %s: %w", s.blobDir, err)
	}
	for _, sh := range shards {
		shardPath := filepath.Join(s.blobDir, sh.Name())
		if !sh.IsDir() || !isLowerHex(sh.Name(), 2) {
			s.discard(shardPath, "not a shard directory")
			continue
		}
		files, err := os.ReadDir(shardPath)
		if err != nil {
			return fmt.Errorf("cachefs: read %s: %w", shardPath, err)
		}
		for _, f := range files {
			p := filepath.Join(shardPath, f.Name())
			name := f.Name()
			if !isLowerHex(name, 64) || name[:2] != sh.Name() {
				s.discard(p, "name is not the sha256 of a blob in this shard")
				continue
			}
			info, err := f.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("cachefs: stat %s: %w", p, err)
			}
			if !info.Mode().IsRegular() {
				s.discard(p, "not a regular file")
				continue
			}
			if info.Size() == 0 && name != emptySHA256 {
				s.discard(p, "empty file named for a non-empty blob")
				continue
			}
			s.blobs[proto.Digest("sha256:"+name)] = &entry{size: info.Size(), lastUsed: info.ModTime()}
			s.used += info.Size()
		}
	}
	return nil
}

// emptySHA256 is the hex sha256 of zero bytes, the one blob that may be empty.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func (s *Store) discard(p, why string) {
	if err := os.RemoveAll(p); err != nil {
		s.log.Error("cannot remove stray file from the cache; remove it by hand", "path", p, "why", why, "err", err)
		return
	}
	s.log.Warn("removed stray file from the cache", "path", p, "why", why)
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (s *Store) blobPath(d proto.Digest) string {
	h := d.Hex()
	return filepath.Join(s.blobDir, h[:2], h)
}

// Has reports whether d's blob is in the cache.
func (s *Store) Has(d proto.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.blobs[d]
	return ok && !s.closed
}

// Path returns the path of d's blob and marks it used. The path stays valid
// until the blob is evicted or removed; Pin it to hold it.
func (s *Store) Path(d proto.Digest) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.blobs[d]
	if !ok || s.closed {
		return "", false
	}
	p := s.blobPath(d)
	if !s.touchLocked(d, e) {
		return "", false
	}
	return p, true
}

// touchLocked records a use of d in memory and in the file's mtime, where
// Open finds it after a restart. It drops a blob whose file has vanished
// (deleted by hand), so the next Fetch downloads it again.
func (s *Store) touchLocked(d proto.Digest, e *entry) bool {
	now := s.now()
	e.lastUsed = now
	s.policy.access(d)
	err := os.Chtimes(s.blobPath(d), now, now)
	if errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("blob vanished from disk; dropping it from the index", "blob", d.Short())
		delete(s.blobs, d)
		s.policy.remove(d)
		s.used -= e.size
		return false
	}
	if err != nil {
		s.log.Debug("cannot record last use on disk", "blob", d.Short(), "err", err)
	}
	return true
}

// Pin keeps d's blob from being evicted or removed until unpin is called.
// Pins nest; unpin is idempotent.
func (s *Store) Pin(d proto.Digest) (unpin func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	e, ok := s.blobs[d]
	if !ok {
		return nil, fmt.Errorf("cachefs: pin %s: fetch it first: %w", d, ErrNotCached)
	}
	e.pins++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			e.pins--
			s.mu.Unlock()
		})
	}, nil
}

// Remove deletes d's blob. It refuses a pinned blob with ErrPinned.
func (s *Store) Remove(d proto.Digest) error {
	s.mu.Lock()
	e, ok := s.blobs[d]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("cachefs: remove %s: %w", d, ErrNotCached)
	}
	if e.pins > 0 {
		s.mu.Unlock()
		return fmt.Errorf("cachefs: remove %s: %d job(s) hold it; retry when they finish: %w", d, e.pins, ErrPinned)
	}
	trash := s.evictLocked([]proto.Digest{d})
	_, stuck := s.blobs[d]
	s.mu.Unlock()
	s.emptyTrash(trash)
	if stuck {
		return fmt.Errorf("cachefs: remove %s: could not move it out of the cache; see the log for the file system's error", d)
	}
	return nil
}

// List returns every cached blob, sorted by digest.
func (s *Store) List() []BlobInfo {
	s.mu.Lock()
	out := make([]BlobInfo, 0, len(s.blobs))
	for d, e := range s.blobs {
		out = append(out, BlobInfo{Digest: d, Size: e.size, LastUsed: e.lastUsed, Pins: e.pins})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b BlobInfo) int {
		switch {
		case a.Digest < b.Digest:
			return -1
		case a.Digest > b.Digest:
			return 1
		}
		return 0
	})
	return out
}

// Usage returns the bytes of all cached blobs and the budget (0: unlimited).
func (s *Store) Usage() (used, max int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.max
}

// Close stops in-flight copies, waits for them to clean up and releases the
// directory. Blobs stay on disk for the next Open.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.closing)
	s.mu.Unlock()
	s.active.Wait()
	return s.lock.release()
}

// begin registers an operation that writes to disk, so Close can wait for it.
func (s *Store) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.active.Add(1)
	return nil
}
