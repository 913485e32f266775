package cachefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// How a chunked fetch shares the work (see FetchBlob):
//
//   - Chunks some peer has (whole or already written) come from the nearest
//     such peer that is not being avoided, the one this host is reading
//     least from breaking ties, so one download spreads over many sources.
//   - A chunk no peer has comes from the origin, but each chunk from the
//     origin is read by one host only: the hosts downloading the blob
//     (they announce themselves before reading anything) split the chunks
//     among themselves by index, after PeerSettle lets hosts that started
//     together hear of each other, and fetch the others' chunks from them
//     once written. A chunk still missing PeerStall after the download last
//     made progress comes from the origin whoever it belongs to, so a host
//     that dies or is cut off holds nobody up for long.
//   - Each chunk is checked against its digest from the catalog before it
//     is written; a peer that sends bad bytes, or breaks off, is avoided
//     for PeerAvoid and the chunk is fetched again elsewhere. The whole
//     blob is hashed as it fills in and checked against its digest before
//     it is renamed into place, as a Put is.

type peerConfig struct {
	parallel                int
	settle, stall, avoidFor time.Duration
}

// pollEvery is how often a download that waits on other hosts looks again.
const pollEvery = 20 * time.Millisecond

// avoidList remembers peers that failed, and until when to leave them out.
type avoidList struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (a *avoidList) add(peer string, until time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.until == nil {
		a.until = map[string]time.Time{}
	}
	a.until[peer] = until
}

func (a *avoidList) avoided(peer string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.until[peer]
	if ok && !now.Before(t) {
		delete(a.until, peer)
		return false
	}
	return ok
}

// chunkFetch is one chunked download in progress. Its temp file is
// registered in Store.partials, so the peer blob server can hand out the
// chunks already written.
type chunkFetch struct {
	s     *Store
	b     Blob
	peers Peers
	tmp   string
	f     *os.File
	order []int // this host's order of chunks, rotated by its name

	mu       sync.Mutex
	done     []bool
	inflight []bool
	ndone    int
	load     map[string]int // chunks being read from each peer
	progress time.Time      // when the last chunk was written
	started  time.Time
	err      error
	src      FetchSource
	// originTries counts the origin's bad copies of each chunk.
	originTries []int
	changed     chan struct{} // closed and replaced when a chunk is written
}

// fetchChunked downloads b in chunks from peers and the origin (see the
// top of this file) and renames it into the cache once it is whole and
// verified.
func (s *Store) fetchChunked(ctx context.Context, b Blob, peers Peers) (string, FetchSource, error) {
	if s.max > 0 && b.Size > s.max {
		return "", FetchSource{}, fmt.Errorf("cachefs: fetch %s: its %d bytes exceed the whole cache budget of %d; raise the cache's MaxBytes: %w", b.Digest, b.Size, s.max, ErrTooLarge)
	}
	f, err := os.CreateTemp(s.tmpDir, b.Digest.Hex()+".*.partial")
	if err != nil {
		return "", FetchSource{}, fmt.Errorf("cachefs: fetch %s: create temp file in %s: %w", b.Digest, s.tmpDir, err)
	}
	n := len(b.Chunks)
	now := time.Now()
	cf := &chunkFetch{s: s, b: b, peers: peers, tmp: f.Name(), f: f, order: rotated(n, peers.Self()),
		done: make([]bool, n), inflight: make([]bool, n), originTries: make([]int, n),
		load: map[string]int{}, progress: now, started: now, changed: make(chan struct{})}
	kept := false
	defer func() {
		s.partMu.Lock()
		delete(s.partials, b.Digest)
		s.partMu.Unlock()
		if !kept {
			f.Close()
			os.Remove(cf.tmp)
		}
	}()
	if err := f.Truncate(b.Size); err != nil {
		return "", FetchSource{}, s.writeErr(b.Digest, 0, err)
	}
	s.partMu.Lock()
	s.partials[b.Digest] = cf
	s.partMu.Unlock()
	peers.Announce(b.Digest, nil)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { cf.fail(ctx.Err()) })
	defer stop()
	go func() {
		select {
		case <-s.closing:
			cf.fail(ErrClosed)
		case <-ctx.Done():
		}
	}()

	hashed := make(chan error, 1)
	go func() { hashed <- cf.hashInOrder() }()
	var wg sync.WaitGroup
	for range min(s.peerCfg.parallel, n) {
		wg.Add(1)
		go func() { defer wg.Done(); cf.work(ctx) }()
	}
	wg.Wait()
	herr := <-hashed
	cf.mu.Lock()
	err, src := cf.err, cf.src
	cf.mu.Unlock()
	if err == nil {
		err = herr
	}
	if err == nil {
		err = f.Sync()
		if err == nil {
			err = f.Close()
		}
		if err != nil {
			err = s.writeErr(b.Digest, b.Size, err)
		}
	}
	if err != nil {
		return "", src, err
	}
	kept = true
	p, err := s.commit(b.Digest, cf.tmp, b.Size)
	if err != nil {
		kept = false // commit removed the temp file
		return "", src, err
	}
	return p, src, nil
}

// rotated is 0..n-1 starting at a place given by name, so hosts that start
// together begin on different chunks.
func rotated(n int, name string) []int {
	h := fnv.New32a()
	h.Write([]byte(name))
	start := int(h.Sum32() % uint32(max(n, 1)))
	out := make([]int, n)
	for i := range out {
		out[i] = (start + i) % n
	}
	return out
}

func (cf *chunkFetch) fail(err error) {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	if cf.err == nil && cf.ndone < len(cf.done) {
		cf.err = err
		close(cf.changed)
		cf.changed = make(chan struct{})
	}
}

// work moves chunks until none is left or the fetch fails.
func (cf *chunkFetch) work(ctx context.Context) {
	buf := make([]byte, cf.b.ChunkSize)
	for {
		c, peer, ok := cf.next(ctx)
		if !ok {
			return
		}
		off := int64(c) * cf.b.ChunkSize
		n := min(cf.b.ChunkSize, cf.b.Size-off)
		var err error
		if peer != "" {
			err = cf.fromPeer(ctx, peer, c, off, buf[:n])
		} else {
			err = cf.fromOrigin(ctx, c, off, buf[:n])
		}
		cf.finish(c, peer, n, err)
	}
}

// next picks the next chunk to read and its source ("" for the origin),
// waiting while every missing chunk is another host's to read.
func (cf *chunkFetch) next(ctx context.Context) (int, string, bool) {
	self := cf.peers.Self()
	for {
		holders := cf.peers.Holders(cf.b.Digest)
		now := time.Now()
		cf.mu.Lock()
		if cf.err != nil || cf.ndone == len(cf.done) {
			cf.mu.Unlock()
			return 0, "", false
		}
		if c, peer, ok := cf.pickLocked(holders, self, now); ok {
			cf.inflight[c] = true
			if peer != "" {
				cf.load[peer]++
			}
			cf.mu.Unlock()
			return c, peer, true
		}
		changed := cf.changed
		cf.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, "", false
		case <-changed:
		case <-time.After(pollEvery):
		}
	}
}

func (cf *chunkFetch) pickLocked(holders []PeerHolder, self string, now time.Time) (int, string, bool) {
	usable := holders[:0:0]
	for _, h := range holders {
		if h.Name != self && !cf.s.avoid.avoided(h.Name, now) {
			usable = append(usable, h)
		}
	}
	// A chunk a peer has, from the nearest, least-used such peer.
	var have map[string]map[int]bool
	for _, c := range cf.order {
		if cf.done[c] || cf.inflight[c] {
			continue
		}
		best := -1
		for i, h := range usable {
			if !h.Whole {
				if have == nil {
					have = map[string]map[int]bool{}
				}
				set, ok := have[h.Name]
				if !ok {
					set = make(map[int]bool, len(h.Chunks))
					for _, x := range h.Chunks {
						set[x] = true
					}
					have[h.Name] = set
				}
				if !set[c] {
					continue
				}
			}
			if best < 0 || cf.closer(h, usable[best]) {
				best = i
			}
		}
		if best >= 0 {
			return c, usable[best].Name, true
		}
	}
	if now.Sub(cf.started) < cf.s.peerCfg.settle {
		return 0, "", false
	}
	// A chunk of this host's share of the origin's.
	pullers := []string{self}
	for _, h := range usable {
		if !h.Whole {
			pullers = append(pullers, h.Name)
		}
	}
	slices.Sort(pullers)
	for _, c := range cf.order {
		if !cf.done[c] && !cf.inflight[c] && pullers[c%len(pullers)] == self {
			return c, "", true
		}
	}
	// Someone else's share, once they have kept us waiting too long.
	if now.Sub(cf.progress) >= cf.s.peerCfg.stall {
		for _, c := range cf.order {
			if !cf.done[c] && !cf.inflight[c] {
				return c, "", true
			}
		}
	}
	return 0, "", false
}

// closer ranks peers: nearer first, then the one this fetch reads least
// from, then whole copies, then by name.
func (cf *chunkFetch) closer(a, b PeerHolder) bool {
	if a.Distance != b.Distance {
		return a.Distance < b.Distance
	}
	if la, lb := cf.load[a.Name], cf.load[b.Name]; la != lb {
		return la < lb
	}
	if a.Whole != b.Whole {
		return a.Whole
	}
	return a.Name < b.Name
}

func (cf *chunkFetch) fromPeer(ctx context.Context, peer string, c int, off int64, buf []byte) error {
	rc, err := cf.peers.OpenRange(ctx, peer, cf.b.Digest, off, int64(len(buf)))
	if err != nil {
		return err
	}
	defer rc.Close()
	return cf.readChunk(rc, c, buf)
}

func (cf *chunkFetch) fromOrigin(ctx context.Context, c int, off int64, buf []byte) error {
	var rc io.ReadCloser
	var err error
	if ro, ok := cf.b.Origin.(RangeOrigin); ok {
		rc, err = ro.OpenRange(ctx, cf.b.Key, off, int64(len(buf)))
	} else {
		rc, _, err = cf.b.Origin.Open(ctx, cf.b.Key)
		if err == nil {
			if _, err = io.CopyN(io.Discard, rc, off); err != nil {
				rc.Close()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("cachefs: fetch %s chunk %d from %s key %q: %w", cf.b.Digest, c, cf.b.Origin, cf.b.Key, err)
	}
	defer rc.Close()
	return cf.readChunk(rc, c, buf)
}

// readChunk reads exactly one chunk, checks it against its digest and
// writes it into the temp file.
func (cf *chunkFetch) readChunk(r io.Reader, c int, buf []byte) error {
	if _, err := io.ReadFull(r, buf); err != nil {
		return fmt.Errorf("chunk %d broke off: %w", c, err)
	}
	if got := sha256.Sum256(buf); !bytes.Equal(got[:], mustSum(cf.b.Chunks[c])) {
		return fmt.Errorf("chunk %d hashes to %s, want %s: %w", c, proto.DigestFromSum(got[:]).Short(), cf.b.Chunks[c].Short(), ErrDigestMismatch)
	}
	off := int64(c) * cf.b.ChunkSize
	if _, err := cf.f.WriteAt(buf, off); err != nil {
		return cf.s.writeErr(cf.b.Digest, off, err)
	}
	startWriteback(cf.f, off, int64(len(buf)))
	return nil
}

func mustSum(d proto.Digest) []byte {
	var out [sha256.Size]byte
	h := d.Hex()
	for i := range out {
		out[i] = unhex(h[2*i])<<4 | unhex(h[2*i+1])
	}
	return out[:]
}

func unhex(c byte) byte {
	if c >= 'a' {
		return c - 'a' + 10
	}
	return c - '0'
}

// finish records a chunk's outcome.
func (cf *chunkFetch) finish(c int, peer string, n int64, err error) {
	s := cf.s
	cf.mu.Lock()
	cf.inflight[c] = false
	if peer != "" {
		cf.load[peer]--
	}
	if err == nil {
		cf.done[c] = true
		cf.ndone++
		cf.progress = time.Now()
		if peer != "" {
			cf.src.Peer += n
		} else {
			cf.src.Origin += n
		}
		close(cf.changed)
		cf.changed = make(chan struct{})
		cf.mu.Unlock()
		s.metrics.fromSource(sourceOf(peer), n)
		cf.peers.Announce(cf.b.Digest, []int{c})
		return
	}
	if cf.err != nil { // the fetch already failed; this is its echo
		cf.mu.Unlock()
		return
	}
	reason := failureReason(err)
	if peer != "" {
		cf.mu.Unlock()
		s.avoid.add(peer, time.Now().Add(s.peerCfg.avoidFor))
		s.metrics.peerChunkFailed(peer, reason)
		s.log.Warn("peer failed a chunk; fetching it elsewhere and leaving the peer out for a while",
			"blob", cf.b.Digest.Short(), "chunk", c, "peer", peer, "avoid_for", s.peerCfg.avoidFor, "err", err)
		return
	}
	s.metrics.failed(tierDisk, reason)
	if errors.Is(err, ErrDigestMismatch) && cf.originTries[c] < fetchRetries {
		cf.originTries[c]++
		cf.mu.Unlock()
		s.log.Warn("origin sent a chunk that does not match its digest; retrying", "blob", cf.b.Digest.Short(), "chunk", c, "attempt", cf.originTries[c], "err", err)
		return
	}
	cf.mu.Unlock()
	if errors.Is(err, ErrDigestMismatch) {
		err = fmt.Errorf("cachefs: fetch %s from %s key %q: chunk %d did not match its digest in %d attempts; the object at the origin is not the one the catalog describes: re-push the model: %w",
			cf.b.Digest, cf.b.Origin, cf.b.Key, c, fetchRetries+1, err)
	}
	cf.fail(err)
}

func sourceOf(peer string) string {
	if peer != "" {
		return "peer"
	}
	return "origin"
}

// hashInOrder hashes the temp file chunk by chunk as the chunks are
// written, so the whole-blob check costs no extra pass at the end.
func (cf *chunkFetch) hashInOrder() error {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for c := range cf.done {
		for {
			cf.mu.Lock()
			done, err, changed := cf.done[c], cf.err, cf.changed
			cf.mu.Unlock()
			if err != nil {
				return err
			}
			if done {
				break
			}
			<-changed
		}
		off := int64(c) * cf.b.ChunkSize
		sr := io.NewSectionReader(cf.f, off, min(cf.b.ChunkSize, cf.b.Size-off))
		if _, err := io.CopyBuffer(h, sr, buf); err != nil {
			return fmt.Errorf("cachefs: fetch %s: read back chunk %d: %w", cf.b.Digest, c, err)
		}
	}
	if got := proto.DigestFromSum(h.Sum(nil)); got != cf.b.Digest {
		return fmt.Errorf("cachefs: fetch %s: every chunk matched the catalog, but the whole hashes to %s; the catalog's chunk list does not belong to this digest: re-push the model: %w",
			cf.b.Digest, got, ErrDigestMismatch)
	}
	return nil
}

// OpenPartial opens the temp file of a chunked download of d in progress,
// if bytes [off, off+n) are already written and verified, for a peer that
// asks for them. The caller reads only that range and closes the file.
func (s *Store) OpenPartial(d proto.Digest, off, n int64) (*os.File, error) {
	s.partMu.Lock()
	cf := s.partials[d]
	s.partMu.Unlock()
	if cf == nil || n <= 0 || off < 0 || off+n > cf.b.Size {
		return nil, ErrNotCached
	}
	cf.mu.Lock()
	defer cf.mu.Unlock()
	for c := off / cf.b.ChunkSize; c <= (off+n-1)/cf.b.ChunkSize; c++ {
		if !cf.done[c] {
			return nil, ErrNotCached
		}
	}
	// Once every chunk is in, the file may be renamed into place at any
	// moment; then the caller finds it with Path instead. A file opened
	// before the rename reads on.
	f, err := os.Open(cf.tmp)
	if err != nil {
		return nil, ErrNotCached
	}
	return f, nil
}

// Partials lists the chunks written so far of every chunked download in
// progress, for the host's published inventory.
func (s *Store) Partials() map[proto.Digest][]int {
	s.partMu.Lock()
	list := make([]*chunkFetch, 0, len(s.partials))
	for _, cf := range s.partials {
		list = append(list, cf)
	}
	s.partMu.Unlock()
	out := make(map[proto.Digest][]int, len(list))
	for _, cf := range list {
		cf.mu.Lock()
		idx := []int{}
		for c, ok := range cf.done {
			if ok {
				idx = append(idx, c)
			}
		}
		cf.mu.Unlock()
		out[cf.b.Digest] = idx
	}
	return out
}

// PartialSize returns the size of d if a chunked download of it is in
// progress.
func (s *Store) PartialSize(d proto.Digest) (int64, bool) {
	s.partMu.Lock()
	defer s.partMu.Unlock()
	if cf := s.partials[d]; cf != nil {
		return cf.b.Size, true
	}
	return 0, false
}
