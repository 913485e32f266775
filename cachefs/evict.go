package cachefs

import (
	"container/list"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/hearth-gpu/hearth/proto"
)

// policy decides which blobs leave the cache when it must make room. The
// store tells it every event under s.mu, so a policy keeps its own order
// (queues, a heap, use counts) instead of sorting the whole index on each
// Put. Which policy the store uses, and why, is in policy_s3fifo.go.
type policy interface {
	// admit records a blob that entered the cache: committed by Put, or
	// found by Open's scan (oldest use first, see seedPolicy).
	admit(d proto.Digest, size int64)
	// access records a use of a cached blob.
	access(d proto.Digest)
	// remove forgets a blob that left the cache. A blob among the last
	// victims returned counts as evicted (GDSF ages on it, S3-FIFO
	// remembers it as a ghost); any other left by Remove or Verify.
	remove(d proto.Digest)
	// victims returns unpinned blobs to evict, in order, until their sizes
	// add up to need, or every unpinned blob it has if they cannot. It may
	// reorder its own state (S3-FIFO promotes, SIEVE moves its hand) but
	// keeps the blobs it returns until remove is called for each: a Put
	// that then fails with ErrNoSpace evicts nothing.
	victims(need int64, pinned func(proto.Digest) bool) []proto.Digest
}

// defaultPolicy is the policy Open gives a Store with a budget of maxBytes.
func defaultPolicy(maxBytes int64) policy { return newS3FIFO(maxBytes) }

// seedPolicy tells the policy about the blobs Open found, oldest use first
// (ties by digest), so a restart keeps their recency order. Use counts are
// not on disk, so GDSF starts every blob at one use and S3-FIFO puts every
// blob in its small queue. Callers hold s.mu or own s alone.
func (s *Store) seedPolicy() {
	ds := slices.Collect(maps.Keys(s.blobs))
	slices.SortFunc(ds, func(a, b proto.Digest) int {
		if c := s.blobs[a].lastUsed.Compare(s.blobs[b].lastUsed); c != 0 {
			return c
		}
		return strings.Compare(string(a), string(b))
	})
	for _, d := range ds {
		s.policy.admit(d, s.blobs[d].size)
	}
}

// chooseVictims asks the policy for unpinned blobs worth need bytes and
// returns them with the bytes they free, which is less than need when the
// rest of the cache is pinned. Callers hold s.mu.
func (s *Store) chooseVictims(need int64) ([]proto.Digest, int64) {
	if need <= 0 {
		return nil, 0
	}
	// A digest the index lacks counts as pinned: never evict what we
	// cannot account for.
	victims := s.policy.victims(need, func(d proto.Digest) bool {
		e, ok := s.blobs[d]
		return !ok || e.pins > 0
	})
	var freed int64
	for _, d := range victims {
		freed += s.blobs[d].size
	}
	return victims, freed
}

// pinnedBytes is the bytes no eviction can free. Callers hold s.mu.
func (s *Store) pinnedBytes() int64 {
	var n int64
	for _, e := range s.blobs {
		if e.pins > 0 {
			n += e.size
		}
	}
	return n
}

// evictLocked takes victims out of the index and renames their files into
// tmp/, returning the new paths for emptyTrash to unlink once s.mu is
// released (unlinking 24 GB can take a while). Renaming under the lock keeps
// a Put of the same digest from racing a late unlink of its new file.
// Callers hold s.mu.
func (s *Store) evictLocked(victims []proto.Digest) []string {
	var trash []string
	for _, d := range victims {
		e, ok := s.blobs[d]
		if !ok {
			continue
		}
		to := filepath.Join(s.tmpDir, fmt.Sprintf("evict-%s-%d", d.Hex(), s.trashSeq.Add(1)))
		err := os.Rename(s.blobPath(d), to)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("cannot evict blob; the cache may stay over budget", "blob", d.Short(), "err", err)
			continue
		}
		if err == nil {
			trash = append(trash, to)
		}
		delete(s.blobs, d)
		s.policy.remove(d)
		s.used -= e.size
		s.log.Info("evicted blob", "blob", d.Short(), "size", e.size, "last_used", e.lastUsed)
	}
	return trash
}

// emptyTrash unlinks evicted blobs. A failure is only logged: tmp/ is
// emptied again by the next Open.
func (s *Store) emptyTrash(paths []string) {
	for _, p := range paths {
		if err := os.Remove(p); err != nil {
			s.log.Warn("cannot delete evicted blob; the next Open will", "path", p, "err", err)
		}
	}
}

// lru evicts the least recently used blob first. It is the baseline the
// other policies are measured against, and tests use it where they need
// plain recency order.
type lru struct {
	order *list.List // of lruItem, most recent at the front
	elems map[proto.Digest]*list.Element
}

type lruItem struct {
	d    proto.Digest
	size int64
}

func newLRU() *lru {
	return &lru{order: list.New(), elems: make(map[proto.Digest]*list.Element)}
}

func (p *lru) admit(d proto.Digest, size int64) {
	if e, ok := p.elems[d]; ok {
		p.order.MoveToFront(e)
		return
	}
	p.elems[d] = p.order.PushFront(lruItem{d, size})
}

func (p *lru) access(d proto.Digest) {
	if e, ok := p.elems[d]; ok {
		p.order.MoveToFront(e)
	}
}

func (p *lru) remove(d proto.Digest) {
	if e, ok := p.elems[d]; ok {
		p.order.Remove(e)
		delete(p.elems, d)
	}
}

func (p *lru) victims(need int64, pinned func(proto.Digest) bool) []proto.Digest {
	var out []proto.Digest
	var freed int64
	for e := p.order.Back(); e != nil && freed < need; e = e.Prev() {
		it := e.Value.(lruItem)
		if pinned(it.d) {
			continue
		}
		out = append(out, it.d)
		freed += it.size
	}
	return out
}

// verdict is what a walker's judge decides about one queue element.
type verdict int

const (
	pass  verdict = iota // leave it as it is: pinned, or already taken
	spare                // keep it, with its state changed (a bit cleared, moved)
	take                 // evict it
)

// walker scans a queue from a starting point toward its head for victims,
// resuming where it stopped. At the head it starts again at the tail
// (SIEVE's hand wrapping, S3-FIFO's reinsertion), and it gives up after a
// whole pass from the tail that neither took nor spared anything, which
// bounds the walk: sparing always spends something (a visited bit, a use).
type walker struct {
	q      *list.List
	at     *list.Element // next to judge; nil: start a pass at the tail
	inPass bool          // the current pass started at the tail
	idle   bool          // and has neither taken nor spared
	done   bool
}

// next returns the next element judged take, or nil when none is left.
// judge may move or remove the element it is given, never another.
func (w *walker) next(judge func(*list.Element) verdict) *list.Element {
	for !w.done {
		if w.at == nil {
			if w.inPass && w.idle {
				w.done = true
				break
			}
			w.at, w.inPass, w.idle = w.q.Back(), true, true
			if w.at == nil {
				w.done = true
				break
			}
		}
		e := w.at
		w.at = e.Prev()
		switch judge(e) {
		case take:
			w.idle = false
			return e
		case spare:
			w.idle = false
		}
	}
	return nil
}

// reopen lets a walker that gave up look again, after elements were added.
func (w *walker) reopen() { w.done, w.inPass = false, false }
