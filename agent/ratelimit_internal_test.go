package agent

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// The limiter lets a burst through, then paces the rest at its rate: it
// asks to sleep exactly as long as the bytes beyond the burst take at that
// rate (a fake clock that advances by the sleeps, so nothing waits).
func TestRateLimiterPaces(t *testing.T) {
	clock := time.Unix(0, 0)
	var slept time.Duration
	l := &rateLimiter{rate: 1e6, burst: 1 << 20, now: func() time.Time { return clock },
		sleep: func(d time.Duration) { slept += d; clock = clock.Add(d) }}
	l.tokens, l.last = l.burst, clock
	n, err := io.Copy(io.Discard, l.reader(bytes.NewReader(make([]byte, 5<<20))))
	if err != nil || n != 5<<20 {
		t.Fatalf("copied %d, %v", n, err)
	}
	want := time.Duration(float64(4<<20) / 1e6 * float64(time.Second))
	if d := slept - want; d < -time.Millisecond || d > time.Millisecond {
		t.Fatalf("slept %v for 4 MiB beyond the burst at 1 MB/s; want %v", slept, want)
	}
}
