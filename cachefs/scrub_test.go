package cachefs

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

func TestScrubDropsCorruptKeepsGood(t *testing.T) {
	const key = "vae/sdxl.safetensors"
	s := openTestStore(t, t.TempDir(), 0, nil)
	good := putN(t, s, 2, 3<<20+5, 500)
	b, bad := testBlob(3<<20, 510)
	o := newTestOrigin(t, key, b)
	p, _, err := s.Fetch(context.Background(), bad, o, key)
	if err != nil {
		t.Fatal(err)
	}
	unpin, err := s.Pin(bad) // wrong bytes must go even from under a job
	if err != nil {
		t.Fatal(err)
	}
	defer unpin()
	corruptFile(t, p, 2<<20+1)

	rep, err := s.Scrub(context.Background(), ScrubOptions{BytesPerSecond: 1 << 40})
	if err != nil {
		t.Fatalf("Scrub: %v", err)
	}
	if rep.Checked != 2 || !slices.Equal(rep.Corrupt, []proto.Digest{bad}) || len(rep.Unreadable) != 0 || rep.Missing != 0 {
		t.Fatalf("Scrub report = %+v; want 2 checked, %s corrupt", rep, bad.Short())
	}
	if want := int64(2*(3<<20+5) + 3<<20); rep.Bytes != want {
		t.Fatalf("Scrub read %d bytes, want %d", rep.Bytes, want)
	}
	if s.Has(bad) {
		t.Fatalf("corrupt blob is still cached")
	}
	for _, d := range good {
		if !s.Has(d) {
			t.Fatalf("good blob %s was dropped", d.Short())
		}
	}
	assertNoTemp(t, s)
	if _, fetched, err := s.Fetch(context.Background(), bad, o, key); err != nil || !fetched {
		t.Fatalf("Fetch after the scrub = %v, %v; want a fresh download", fetched, err)
	}
	if rep, err := s.Scrub(context.Background(), ScrubOptions{}); err != nil || rep.Checked != 3 || len(rep.Corrupt) != 0 {
		t.Fatalf("second Scrub = %+v, %v; want 3 checked, none corrupt", rep, err)
	}
}

func TestScrubMaxBytesTakesTurns(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	ds := putN(t, s, 3, 4096, 520)
	checked := make(map[proto.Digest]uint64)
	seen := make(map[proto.Digest]int)
	for pass := uint64(1); pass <= 3; pass++ {
		rep, err := s.scrub(context.Background(), ScrubOptions{MaxBytes: 4096}, checked, pass)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Checked != 1 || rep.Remaining != 2 {
			t.Fatalf("pass %d: %+v; want 1 checked, 2 remaining", pass, rep)
		}
		for d, p := range checked {
			if p == pass {
				seen[d]++
			}
		}
	}
	for _, d := range ds {
		if seen[d] != 1 {
			t.Fatalf("blob %s checked %d times in 3 passes of one blob each, want once", d.Short(), seen[d])
		}
	}
}

func TestScrubEveryRunsUntilCancelled(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	b, d := testBlob(1<<20, 530)
	p := mustPut(t, s, b, d)
	corruptFile(t, p, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ScrubEvery(ctx, time.Millisecond, ScrubOptions{}) }()
	for s.Has(d) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("ScrubEvery after cancel: err = %v, want context.Canceled", err)
	}

	go func() { done <- s.ScrubEvery(context.Background(), time.Millisecond, ScrubOptions{}) }()
	s.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("ScrubEvery after Close: err = %v, want ErrClosed", err)
	}
}

func TestScrubRejectsBadOptions(t *testing.T) {
	s := openTestStore(t, t.TempDir(), 0, nil)
	if _, err := s.Scrub(context.Background(), ScrubOptions{BytesPerSecond: -1}); err == nil {
		t.Fatalf("Scrub with a negative rate succeeded")
	}
	if err := s.ScrubEvery(context.Background(), 0, ScrubOptions{}); err == nil {
		t.Fatalf("ScrubEvery with a zero interval succeeded")
	}
}

// TestPacer checks the schedule a rate limit asks for, on a fake clock
// that sleeping advances.
func TestPacer(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	start := now
	var slept time.Duration
	p := &pacer{rate: 1000, start: start, now: func() time.Time { return now },
		sleep: func(_ context.Context, d time.Duration) error { now = now.Add(d); slept += d; return nil }}
	for range 6 {
		if err := p.wait(context.Background(), 500); err != nil {
			t.Fatal(err)
		}
	}
	if now.Sub(start) != 3*time.Second || slept != 3*time.Second {
		t.Fatalf("3000 bytes at 1000 B/s ended %s after start having slept %s, want 3s and 3s", now.Sub(start), slept)
	}
	// Time spent elsewhere (hashing, a slow disk) counts toward the rate.
	now = now.Add(2 * time.Second)
	slept = 0
	if err := p.wait(context.Background(), 1500); err != nil {
		t.Fatal(err)
	}
	if slept != 0 {
		t.Fatalf("slept %s though the reads were behind the rate, want 0", slept)
	}
	off := &pacer{now: time.Now, sleep: func(context.Context, time.Duration) error { t.Fatal("unlimited pacer slept"); return nil }}
	if err := off.wait(context.Background(), 1<<30); err != nil {
		t.Fatal(err)
	}
}
