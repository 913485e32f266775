package webhook

import (
	"math"
	"testing"
	"time"
)

var epoch = time.Unix(1700000000, 0)

func delayAfter(s Schedule, attempt int, rnd func() float64) time.Duration {
	next, _ := s.Next(attempt, epoch, epoch, rnd)
	return next.Sub(epoch)
}

func TestScheduleWithoutJitter(t *testing.T) {
	s := Schedule{Base: time.Second, Max: time.Minute, Window: time.Hour}
	for n, want := range []time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 6: 32 * time.Second, 7: time.Minute, 8: time.Minute} {
		if want != 0 {
			if got := delayAfter(s, n, nil); got != want {
				t.Errorf("attempt %d: delay %s, want %s", n, got, want)
			}
		}
	}
	prev := time.Duration(0)
	for n := 1; n <= 200; n++ {
		d := delayAfter(s, n, nil)
		if d < prev || d > s.Max || d <= 0 {
			t.Fatalf("attempt %d: delay %s after %s; want non-decreasing, positive, at most %s", n, d, prev, s.Max)
		}
		prev = d
	}
}

// TestScheduleDoesNotOverflow: a huge attempt number or a huge Max gives
// the cap, not a negative or wrapped delay.
func TestScheduleDoesNotOverflow(t *testing.T) {
	for _, s := range []Schedule{
		{Base: time.Second, Max: 10 * time.Minute, Window: 24 * time.Hour},
		{Base: time.Second, Max: math.MaxInt64, Window: math.MaxInt64},
		{Base: 3, Max: math.MaxInt64 - 1, Window: time.Hour},
		{Base: time.Hour, Max: math.MaxInt64, Window: time.Hour, Jitter: 0.5},
	} {
		prev := time.Duration(0)
		for _, n := range []int{1, 2, 30, 62, 63, 64, 65, 200, 1 << 20, math.MaxInt} {
			next, _ := s.Next(n, epoch, epoch, func() float64 { return 0.999999 })
			d := next.Sub(epoch)
			if d <= 0 || d < prev {
				t.Fatalf("%+v attempt %d: delay %s after %s", s, n, d, prev)
			}
			prev = d
		}
		if s.Jitter == 0 && prev != s.Max {
			t.Errorf("%+v: delay at the largest attempt is %s, want the cap %s", s, prev, s.Max)
		}
	}
}

func TestScheduleGivesUpAfterWindow(t *testing.T) {
	s := Schedule{Base: time.Minute, Max: time.Minute, Window: time.Hour}
	if _, giveUp := s.Next(1, epoch, epoch, nil); giveUp {
		t.Fatal("gave up at once")
	}
	if next, giveUp := s.Next(5, epoch, epoch.Add(59*time.Minute), nil); giveUp || !next.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("next %s, give up %v; an attempt exactly at the window's end is still made", next.Sub(epoch), giveUp)
	}
	if _, giveUp := s.Next(5, epoch, epoch.Add(59*time.Minute+time.Second), nil); !giveUp {
		t.Fatal("no give-up for an attempt past the window")
	}
	if _, giveUp := s.Next(5, epoch, epoch.Add(2*time.Hour), nil); !giveUp {
		t.Fatal("no give-up long past the window")
	}
}

func TestScheduleJitterBounds(t *testing.T) {
	s := Schedule{Base: 10 * time.Second, Max: time.Minute, Window: time.Hour, Jitter: 0.2}
	for _, c := range []struct {
		r        float64
		min, max time.Duration
	}{
		{0, 8 * time.Second, 8 * time.Second},
		{0.5, 10 * time.Second, 10 * time.Second},
		{math.Nextafter(1, 0), 11999 * time.Millisecond, 12 * time.Second},
		{-1, 8 * time.Second, 8 * time.Second},  // a broken rnd stays in bounds
		{7, 12 * time.Second, 12 * time.Second}, // likewise
		{math.NaN(), 8 * time.Second, 8 * time.Second},
	} {
		if d := delayAfter(s, 1, func() float64 { return c.r }); d < c.min || d > c.max {
			t.Errorf("rnd %v: delay %s, want [%s, %s]", c.r, d, c.min, c.max)
		}
	}
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := delayAfter(s, 3, nil) // 40 s, under the 1 min cap
		if d < 32*time.Second || d > 48*time.Second {
			t.Fatalf("math/rand jitter: delay %s outside 40s ±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("math/rand jitter gave only %d distinct delays in 1000 draws", len(seen))
	}
	if d := delayAfter(s, 10, func() float64 { return math.Nextafter(1, 0) }); d > 72*time.Second {
		t.Fatalf("jitter on the cap: %s, want at most Max·1.2", d)
	}
}

// TestDefaultScheduleMatchesItsDoc replays the default schedule without
// jitter, as if every attempt failed instantly, and checks the figures the
// package comment gives.
func TestDefaultScheduleMatchesItsDoc(t *testing.T) {
	if err := DefaultSchedule.Validate(); err != nil {
		t.Fatal(err)
	}
	s := DefaultSchedule
	s.Jitter = 0
	now, attempts := epoch, 1
	for {
		next, giveUp := s.Next(attempts, epoch, now, nil)
		if attempts == 10 && next.Sub(now) != 8*time.Minute+32*time.Second {
			t.Fatalf("10th delay %s", next.Sub(now))
		}
		if attempts == 11 && now.Sub(epoch) != 17*time.Minute+3*time.Second {
			t.Fatalf("11th attempt at %s", now.Sub(epoch))
		}
		if giveUp {
			break
		}
		now, attempts = next, attempts+1
	}
	if attempts < 140 || attempts > 160 {
		t.Fatalf("%d attempts in the window; the package comment says about 150", attempts)
	}
}

func TestScheduleValidate(t *testing.T) {
	for _, c := range []struct {
		s  Schedule
		ok bool
	}{
		{DefaultSchedule, true},
		{Schedule{Base: time.Second, Max: time.Second, Window: time.Second}, true},
		{Schedule{Base: 0, Max: time.Second, Window: time.Hour}, false},
		{Schedule{Base: -time.Second, Max: time.Second, Window: time.Hour}, false},
		{Schedule{Base: 2 * time.Second, Max: time.Second, Window: time.Hour}, false},
		{Schedule{Base: time.Second, Max: time.Second, Window: 0}, false},
		{Schedule{Base: time.Second, Max: time.Second, Window: time.Hour, Jitter: -0.1}, false},
		{Schedule{Base: time.Second, Max: time.Second, Window: time.Hour, Jitter: 1}, false},
		{Schedule{Base: time.Second, Max: time.Second, Window: time.Hour, Jitter: math.NaN()}, false},
		{Schedule{}, false},
	} {
		if err := c.s.Validate(); (err == nil) != c.ok {
			t.Errorf("%+v: Validate = %v, want ok=%v", c.s, err, c.ok)
		}
	}
}

// TestScheduleInvalidDoesNotMisbehave: Next on a schedule that failed
// Validate still returns promptly and never goes back in time.
func TestScheduleInvalidDoesNotMisbehave(t *testing.T) {
	for _, s := range []Schedule{{}, {Base: -time.Second, Max: -time.Second}, {Base: time.Second, Max: 0, Jitter: 5}} {
		for _, n := range []int{-1, 0, 1, math.MaxInt} {
			if next, _ := s.Next(n, epoch, epoch, nil); next.Before(epoch) {
				t.Errorf("%+v attempt %d: next %s is before now", s, n, next.Sub(epoch))
			}
		}
	}
}
