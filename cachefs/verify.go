package cachefs

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"

	"github.com/hearth-gpu/hearth/proto"
)

// Verify rehashes d's blob and, if its bytes no longer match its name,
// drops it from the cache (pinned or not: wrong bytes must not be served)
// and returns ErrDigestMismatch. Open does not rehash, to keep starts fast;
// call Verify where a blob's provenance is in doubt, e.g. after files were
// copied into the cache by hand or a disk reported errors.
func (s *Store) Verify(ctx context.Context, d proto.Digest) error {
	if err := s.begin(); err != nil {
		return fmt.Errorf("cachefs: verify %s: %w", d, err)
	}
	defer s.active.Done()
	s.mu.Lock()
	e, ok := s.blobs[d]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("cachefs: verify %s: %w", d, ErrNotCached)
	}
	p := s.blobPath(d)
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("cachefs: verify %s: %w", d, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, &cancelReader{ctx: ctx, stop: s.closing, r: f}, make([]byte, copyBufSize))
	if err != nil {
		return fmt.Errorf("cachefs: verify %s: read %s: %w", d, p, err)
	}
	got := proto.DigestFromSum(h.Sum(nil))
	if got == d {
		return nil
	}
	s.mu.Lock()
	var trash []string
	if s.blobs[d] == e { // not replaced by a fresh Put while we hashed
		trash = s.evictLocked([]proto.Digest{d})
	}
	s.mu.Unlock()
	s.emptyTrash(trash)
	s.log.Error("cached blob is corrupt; dropped it", "blob", d.Short(), "got", got, "size", n)
	return fmt.Errorf("cachefs: verify %s: %s holds %d bytes that hash to %s; dropped it, fetch it again: %w", d, p, n, got, ErrDigestMismatch)
}
