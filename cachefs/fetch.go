package cachefs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// fetchRetries bounds how often a download whose bytes do not match their
// digest is tried again. A mismatch is usually a transfer cut short or
// corrupted on the way; an object that keeps mismatching is wrong at the
// origin, and retrying forever would only hide that.
const fetchRetries = 3

// Fetch returns the path of d's blob, downloading it from o at key if it is
// not cached; fetched reports whether this call waited on a download. It
// is FetchBlob for a blob whose size and chunks are not known, so it never
// asks peers.
func (s *Store) Fetch(ctx context.Context, d proto.Digest, o Origin, key string) (path string, fetched bool, err error) {
	path, src, err := s.FetchBlob(ctx, Blob{Digest: d, Size: -1, Origin: o, Key: key})
	return path, src.fetched, err
}

// FetchBlob returns the path of b's blob, downloading it if it is not
// cached: from the hosts of the pool (SetPeers) when they have it, in
// chunks from several at once when the catalog gives chunk digests, and
// from b.Origin otherwise. Concurrent calls for one digest share one
// download, which goes on while any of them still waits. A download from
// the origin whose bytes do not match is retried up to fetchRetries times
// with a doubling backoff, then fails with ErrDigestMismatch; mismatching
// bytes are never cached.
func (s *Store) FetchBlob(ctx context.Context, b Blob) (path string, src FetchSource, err error) {
	d := b.Digest
	if err := d.Validate(); err != nil {
		return "", src, fmt.Errorf("cachefs: fetch: %w", err)
	}
	if err := proto.ValidateModelName(b.Key); err != nil {
		return "", src, fmt.Errorf("cachefs: fetch %s: origin key %w", d, err)
	}
	for i, c := range b.Chunks {
		if err := c.Validate(); err != nil {
			return "", src, fmt.Errorf("cachefs: fetch %s: chunk %d: %w", d, i, err)
		}
	}
	if p, ok := s.Path(d); ok {
		s.metrics.lookup(tierDisk, true)
		return p, src, nil
	}
	s.metrics.lookup(tierDisk, false)
	res, err := s.flights.do(ctx, string(d), func(ctx context.Context) (fetchResult, error) {
		return s.download(ctx, b)
	})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return "", src, fmt.Errorf("cachefs: fetch %s from %s key %q: %w", d, b.Origin, b.Key, err)
		}
		return "", src, err
	}
	return res.path, res.src, nil
}

// FetchSource says whether a fetch downloaded the blob, and how many of its
// bytes came from peers and from the origin.
type FetchSource struct {
	fetched      bool
	Peer, Origin int64
}

// Fetched reports whether the call waited on a download.
func (f FetchSource) Fetched() bool { return f.fetched }

type fetchResult struct {
	path string
	src  FetchSource
}

// download runs once per digest at a time (see flightGroup).
func (s *Store) download(ctx context.Context, b Blob) (res fetchResult, err error) {
	d := b.Digest
	// The blob may have landed between Fetch's check and this flight.
	if p, _, ok := s.present(d); ok {
		return fetchResult{path: p}, nil
	}
	start := time.Now()
	done := func(p string, n int64, src FetchSource) fetchResult {
		secs := time.Since(start).Seconds()
		s.metrics.fetched(tierDisk, src.label(), n, time.Since(start))
		s.log.Info("fetched blob", "blob", d.Short(), "origin", b.Origin.String(), "key", b.Key, "size", n,
			"from_peers", src.Peer, "from_origin", src.Origin, "seconds", secs, "mb_per_s", float64(n)/1e6/max(secs, 1e-9))
		src.fetched = true
		return fetchResult{path: p, src: src}
	}
	if peers := s.peerSet(); peers != nil && b.Size > 0 {
		defer func() { peers.Finished(d, err == nil) }()
		if b.chunked() {
			p, src, err := s.fetchChunked(ctx, b, peers)
			if err != nil {
				return fetchResult{}, err
			}
			return done(p, b.Size, src), nil
		}
		if p, ok := s.fetchWhole(ctx, b, peers); ok {
			return done(p, b.Size, FetchSource{Peer: b.Size}), nil
		}
	}
	backoff := s.backoff
	for attempt := 1; ; attempt++ {
		p, n, err := s.fetchOnce(ctx, d, b.Origin, b.Key)
		if err == nil {
			s.metrics.fromSource("origin", n)
			return done(p, n, FetchSource{Origin: n}), nil
		}
		s.metrics.failed(tierDisk, failureReason(err))
		if !errors.Is(err, ErrDigestMismatch) {
			return fetchResult{}, err
		}
		if attempt > fetchRetries {
			return fetchResult{}, fmt.Errorf("cachefs: fetch %s from %s key %q: the bytes did not match the digest in %d attempts; the object at the origin is not the one the catalog names: re-upload it or correct the catalog's digest: %w",
				d, b.Origin, b.Key, attempt, err)
		}
		s.log.Warn("origin sent bytes that do not match their digest; retrying", "blob", d.Short(),
			"origin", b.Origin.String(), "key", b.Key, "attempt", attempt, "backoff", backoff, "err", err)
		if err := s.sleep(ctx, backoff); err != nil {
			return fetchResult{}, err
		}
		backoff *= 2
	}
}

// label names where most of a fetch's bytes came from, for the latency
// histogram.
func (f FetchSource) label() string {
	if f.Peer > f.Origin {
		return "peer"
	}
	return "origin"
}

// fetchWhole copies a blob without chunk digests from the nearest peer that
// holds it whole, trying the next one when a peer fails or sends bytes that
// do not match; ok is false when no peer could.
func (s *Store) fetchWhole(ctx context.Context, b Blob, peers Peers) (string, bool) {
	now := time.Now()
	var whole []PeerHolder
	for _, h := range peers.Holders(b.Digest) {
		if h.Whole && h.Name != peers.Self() && !s.avoid.avoided(h.Name, now) {
			whole = append(whole, h)
		}
	}
	slices.SortStableFunc(whole, func(x, y PeerHolder) int { return x.Distance - y.Distance })
	for _, h := range whole {
		p, n, err := func() (string, int64, error) {
			rc, err := peers.OpenRange(ctx, h.Name, b.Digest, 0, b.Size)
			if err != nil {
				return "", 0, err
			}
			defer rc.Close()
			return s.Put(ctx, b.Digest, rc)
		}()
		if err == nil {
			s.metrics.fromSource("peer", n)
			return p, true
		}
		if ctx.Err() != nil {
			return "", false
		}
		s.avoid.add(h.Name, time.Now().Add(s.peerCfg.avoidFor))
		s.metrics.peerChunkFailed(h.Name, failureReason(err))
		s.log.Warn("peer could not send a blob; trying the next source", "blob", b.Digest.Short(), "peer", h.Name, "err", err)
	}
	return "", false
}

func (s *Store) fetchOnce(ctx context.Context, d proto.Digest, o Origin, key string) (string, int64, error) {
	rc, size, err := o.Open(ctx, key)
	if err != nil {
		return "", 0, fmt.Errorf("cachefs: fetch %s: %w", d, err)
	}
	defer rc.Close()
	if size >= 0 && s.max > 0 && size > s.max {
		return "", 0, fmt.Errorf("cachefs: fetch %s from %s key %q: its %d bytes exceed the whole cache budget of %d; raise the cache's MaxBytes: %w",
			d, o, key, size, s.max, ErrTooLarge)
	}
	p, n, err := s.Put(ctx, d, rc)
	if err == nil && size >= 0 && n != size {
		// The bytes hashed right, so only the origin's metadata is off.
		s.log.Warn("origin reported a size that differs from the blob's", "blob", d.Short(), "key", key, "reported", size, "size", n)
	}
	return p, n, err
}

// sleep waits for d, or less if ctx ends or the store closes.
func (s *Store) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return ErrClosed
	}
}

// flightGroup runs one function per key at a time and hands its result to
// every caller that asked meanwhile (a small singleflight). The function
// runs under its own context, cancelled only when every waiting caller has
// given up, so one impatient job does not fail the download for the rest.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	res     fetchResult
	err     error
	waiters int
	cancel  context.CancelFunc
}

func (g *flightGroup) do(ctx context.Context, key string, fn func(context.Context) (fetchResult, error)) (fetchResult, error) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[string]*flight)
	}
	f, ok := g.m[key]
	if !ok {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		f = &flight{done: make(chan struct{}), cancel: cancel}
		g.m[key] = f
		go func() {
			defer cancel()
			res, err := fn(fctx)
			g.mu.Lock()
			f.res, f.err = res, err
			if g.m[key] == f {
				delete(g.m, key)
			}
			g.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	g.mu.Unlock()

	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		g.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			// Abandoned: stop it, and let the next caller start afresh
			// rather than join a flight that is being cancelled.
			f.cancel()
			if g.m[key] == f {
				delete(g.m, key)
			}
		}
		g.mu.Unlock()
		return fetchResult{}, ctx.Err()
	}
}

// failureReason labels a failed fetch for the failures counter.
func failureReason(err error) string {
	switch {
	case errors.Is(err, ErrDigestMismatch):
		return "digest_mismatch"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrNoSpace):
		return "no_room"
	case isNoSpace(err):
		return "disk_full"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrClosed):
		return "cancelled"
	}
	return "origin"
}
