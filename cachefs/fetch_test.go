package cachefs

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFetchSharesOneDownload(t *testing.T) {
	const key = "sdxl/base.safetensors"
	b, d := testBlob(4<<20, 200)
	o := &countingOrigin{Origin: newTestOrigin(t, key, b), gate: make(chan struct{})}
	s := openTestStore(t, t.TempDir(), 0, nil)

	type result struct {
		path    string
		fetched bool
		err     error
	}
	results := make(chan result, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			p, fetched, err := s.Fetch(context.Background(), d, o, key)
			results <- result{p, fetched, err}
		})
	}
	// Hold the download until all eight callers wait on it.
	for s.waiters(string(d)) < 8 {
		time.Sleep(time.Millisecond)
	}
	close(o.gate)
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil || !r.fetched || r.path != s.blobPath(d) {
			t.Fatalf("Fetch = %q, %v, %v; want %q, true, nil", r.path, r.fetched, r.err, s.blobPath(d))
		}
	}
	if n := o.opens.Load(); n != 1 {
		t.Fatalf("origin opened %d times for 8 concurrent Fetches, want 1", n)
	}

	p, fetched, err := s.Fetch(context.Background(), d, o, key)
	if err != nil || fetched || p != s.blobPath(d) {
		t.Fatalf("Fetch of a cached blob = %q, %v, %v; want a hit", p, fetched, err)
	}
	if n := o.opens.Load(); n != 1 {
		t.Fatalf("a cache hit opened the origin")
	}
}

// waiters reports how many callers wait on key's flight.
func (s *Store) waiters(key string) int {
	s.flights.mu.Lock()
	defer s.flights.mu.Unlock()
	if f, ok := s.flights.m[key]; ok {
		return f.waiters
	}
	return 0
}

func TestFetchCorruptOriginFailsAfterBoundedRetries(t *testing.T) {
	const key = "loras/detail.safetensors"
	b, d := testBlob(1<<20, 210)
	o := &countingOrigin{Origin: newTestOrigin(t, key, b), corruptOpens: 1000}
	s := openTestStore(t, t.TempDir(), 0, nil)
	_, _, err := s.Fetch(context.Background(), d, o, key)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Fetch from a corrupting origin: err = %v, want ErrDigestMismatch", err)
	}
	if msg := err.Error(); !strings.Contains(msg, string(d)) || !strings.Contains(msg, key) {
		t.Fatalf("error %q does not name the digest and the key", msg)
	}
	if n := o.opens.Load(); n != 1+fetchRetries {
		t.Fatalf("origin opened %d times, want %d (one try and %d retries)", n, 1+fetchRetries, fetchRetries)
	}
	if s.Has(d) {
		t.Fatalf("corrupt blob was cached")
	}
	if names := dirEntries(t, s.blobDir); len(names) != 0 {
		t.Fatalf("blobs/ holds %v after a failed fetch", names)
	}
	assertNoTemp(t, s)
}

func TestFetchRecoversFromTransientCorruption(t *testing.T) {
	const key = "vae/sdxl.safetensors"
	b, d := testBlob(1<<20, 220)
	o := &countingOrigin{Origin: newTestOrigin(t, key, b), corruptOpens: 2}
	s := openTestStore(t, t.TempDir(), 0, nil)
	p, fetched, err := s.Fetch(context.Background(), d, o, key)
	if err != nil || !fetched {
		t.Fatalf("Fetch = %q, %v, %v; want success after retries", p, fetched, err)
	}
	if n := o.opens.Load(); n != 3 {
		t.Fatalf("origin opened %d times, want 3", n)
	}
	data, err := os.ReadFile(p)
	if err != nil || len(data) != len(b) {
		t.Fatalf("fetched blob: %d bytes, %v", len(data), err)
	}
}

func TestFetchMissingKeyIsNotRetried(t *testing.T) {
	b, d := testBlob(100, 230)
	o := &countingOrigin{Origin: newTestOrigin(t, "present", b)}
	s := openTestStore(t, t.TempDir(), 0, nil)
	_, _, err := s.Fetch(context.Background(), d, o, "absent")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch of a missing key: err = %v, want ErrNotFound", err)
	}
	if n := o.opens.Load(); n != 1 {
		t.Fatalf("origin opened %d times for a missing key, want 1", n)
	}
}

func TestFetchRejectsBadKey(t *testing.T) {
	b, d := testBlob(100, 240)
	o := &countingOrigin{Origin: newTestOrigin(t, "k", b)}
	s := openTestStore(t, t.TempDir(), 0, nil)
	if _, _, err := s.Fetch(context.Background(), d, o, "../k"); err == nil {
		t.Fatalf("Fetch with key ../k succeeded")
	}
	if o.opens.Load() != 0 {
		t.Fatalf("a bad key reached the origin")
	}
}

func TestFetchTooLargeBySize(t *testing.T) {
	b, d := testBlob(1000, 250)
	o := &countingOrigin{Origin: newTestOrigin(t, "big", b)}
	s := openTestStore(t, t.TempDir(), 500, nil)
	if _, _, err := s.Fetch(context.Background(), d, o, "big"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Fetch of a blob over the budget: err = %v, want ErrTooLarge", err)
	}
	assertNoTemp(t, s)
}

// One caller giving up must not fail the download for another.
func TestFetchSurvivesOneWaiterLeaving(t *testing.T) {
	const key = "ckpt"
	b, d := testBlob(1<<20, 260)
	o := &countingOrigin{Origin: newTestOrigin(t, key, b), gate: make(chan struct{})}
	s := openTestStore(t, t.TempDir(), 0, nil)

	impatient, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { _, _, err := s.Fetch(impatient, d, o, key); errc <- err }()
	go func() { _, _, err := s.Fetch(context.Background(), d, o, key); errc <- err }()
	for s.waiters(string(d)) < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Fetch: err = %v, want context.Canceled", err)
	}
	close(o.gate)
	if err := <-errc; err != nil {
		t.Fatalf("patient Fetch: %v", err)
	}
	if !s.Has(d) || o.opens.Load() != 1 {
		t.Fatalf("has %v, opens %d; want the one download to finish", s.Has(d), o.opens.Load())
	}
}

func TestFetchAbandonedByAllIsCancelled(t *testing.T) {
	const key = "ckpt"
	b, d := testBlob(4<<20, 270)
	o := &countingOrigin{Origin: newTestOrigin(t, key, b), gate: make(chan struct{})}
	s := openTestStore(t, t.TempDir(), 0, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, _, err := s.Fetch(ctx, d, o, key); errc <- err }()
	for s.waiters(string(d)) < 1 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Fetch: err = %v", err)
	}
	close(o.gate)
	// Close waits for the abandoned copy to stop and clean up.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if names := dirEntries(t, s.blobDir); len(names) != 0 {
		t.Fatalf("abandoned download left %v in blobs/", names)
	}
	assertNoTemp(t, s)
}
