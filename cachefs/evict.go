package cachefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// policy decides which blobs leave the cache when it must make room. It is
// kept behind this interface so a policy measured on real job traces (GDSF,
// S3-FIFO) can replace plain LRU without touching the store.
type policy interface {
	// victims returns candidates to evict, in order, until their sizes add
	// up to need; fewer if the candidates cannot cover it. Candidates are
	// every unpinned blob; pinned ones never reach a policy.
	victims(cands []candidate, need int64) []proto.Digest
}

type candidate struct {
	digest   proto.Digest
	size     int64
	lastUsed time.Time
}

// lru evicts the least recently used blob first. Ties (blobs scanned with
// the same mtime) break on digest, so the order is deterministic.
type lru struct{}

func (lru) victims(cands []candidate, need int64) []proto.Digest {
	slices.SortFunc(cands, func(a, b candidate) int {
		if c := a.lastUsed.Compare(b.lastUsed); c != 0 {
			return c
		}
		return strings.Compare(string(a.digest), string(b.digest))
	})
	var out []proto.Digest
	var freed int64
	for _, c := range cands {
		if freed >= need {
			break
		}
		out = append(out, c.digest)
		freed += c.size
	}
	return out
}

// chooseVictims asks the policy for unpinned blobs worth need bytes and
// returns them with the bytes they free, which is less than need when the
// rest of the cache is pinned. Callers hold s.mu.
func (s *Store) chooseVictims(need int64) ([]proto.Digest, int64) {
	if need <= 0 {
		return nil, 0
	}
	cands := make([]candidate, 0, len(s.blobs))
	for d, e := range s.blobs {
		if e.pins == 0 {
			cands = append(cands, candidate{digest: d, size: e.size, lastUsed: e.lastUsed})
		}
	}
	victims := s.policy.victims(cands, need)
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
