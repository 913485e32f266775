package cachefs

import (
	"context"
	"errors"
	"fmt"
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
// not cached; fetched reports whether this call waited on a download.
// Concurrent Fetch calls for one digest share one download, which goes on
// while any of them still waits. A download whose bytes do not match d is
// retried up to fetchRetries times with a doubling backoff, then fails with
// ErrDigestMismatch; mismatching bytes are never cached.
func (s *Store) Fetch(ctx context.Context, d proto.Digest, o Origin, key string) (path string, fetched bool, err error) {
	if err := d.Validate(); err != nil {
		return "", false, fmt.Errorf("cachefs: fetch: %w", err)
	}
	if err := proto.ValidateModelName(key); err != nil {
		return "", false, fmt.Errorf("cachefs: fetch %s: origin key %w", d, err)
	}
	if p, ok := s.Path(d); ok {
		s.metrics.lookup(tierDisk, true)
		return p, false, nil
	}
	s.metrics.lookup(tierDisk, false)
	res, err := s.flights.do(ctx, string(d), func(ctx context.Context) (fetchResult, error) {
		return s.download(ctx, d, o, key)
	})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return "", false, fmt.Errorf("cachefs: fetch %s from %s key %q: %w", d, o, key, err)
		}
		return "", false, err
	}
	return res.path, res.fetched, nil
}

type fetchResult struct {
	path    string
	fetched bool
}

// download runs once per digest at a time (see flightGroup).
func (s *Store) download(ctx context.Context, d proto.Digest, o Origin, key string) (fetchResult, error) {
	// The blob may have landed between Fetch's check and this flight.
	if p, _, ok := s.present(d); ok {
		return fetchResult{path: p}, nil
	}
	backoff := s.backoff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		p, n, err := s.fetchOnce(ctx, d, o, key)
		if err == nil {
			s.metrics.fetched(tierDisk, "origin", n, time.Since(start))
			secs := time.Since(start).Seconds()
			s.log.Info("fetched blob", "blob", d.Short(), "origin", o.String(), "key", key, "size", n,
				"seconds", secs, "mb_per_s", float64(n)/1e6/max(secs, 1e-9), "attempt", attempt)
			return fetchResult{path: p, fetched: true}, nil
		}
		s.metrics.failed(tierDisk, failureReason(err))
		if !errors.Is(err, ErrDigestMismatch) {
			return fetchResult{}, err
		}
		if attempt > fetchRetries {
			return fetchResult{}, fmt.Errorf("cachefs: fetch %s from %s key %q: the bytes did not match the digest in %d attempts; the object at the origin is not the one the catalog names: re-upload it or correct the catalog's digest: %w",
				d, o, key, attempt, err)
		}
		s.log.Warn("origin sent bytes that do not match their digest; retrying", "blob", d.Short(),
			"origin", o.String(), "key", key, "attempt", attempt, "backoff", backoff, "err", err)
		if err := s.sleep(ctx, backoff); err != nil {
			return fetchResult{}, err
		}
		backoff *= 2
	}
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
