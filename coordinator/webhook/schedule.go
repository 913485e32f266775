package webhook

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Schedule says when to retry a failed delivery: after the n-th failed
// attempt (1-based) the next comes min(Max, Base·2^(n-1)) later, scaled by
// a random factor in [1-Jitter, 1+Jitter], and none comes later than
// Window after the first attempt. The package comment explains the
// defaults.
type Schedule struct {
	Base   time.Duration // delay after the first failure
	Max    time.Duration // longest delay between two attempts
	Window time.Duration // no attempt starts later than this after the first
	Jitter float64       // in [0, 1): spreads the retries of many senders
}

// DefaultSchedule retries after about 1 s, 2 s, 4 s, … 8 min 32 s, then
// every 10 min, for 24 h: about 150 attempts.
var DefaultSchedule = Schedule{Base: time.Second, Max: 10 * time.Minute, Window: 24 * time.Hour, Jitter: 0.2}

// Validate reports a schedule that cannot work, in a sentence that names
// the field to fix.
func (s Schedule) Validate() error {
	switch {
	case s.Base <= 0:
		return fmt.Errorf("base %s must be positive", s.Base)
	case s.Max < s.Base:
		return fmt.Errorf("max %s must be at least base %s", s.Max, s.Base)
	case s.Window <= 0:
		return fmt.Errorf("window %s must be positive", s.Window)
	case !(s.Jitter >= 0 && s.Jitter < 1): // written so NaN fails too
		return fmt.Errorf("jitter %v must be at least 0 and less than 1", s.Jitter)
	}
	return nil
}

// Next returns when to make the next attempt after the attempt-th
// (1-based) failed at now, and giveUp when that would be after
// first+Window. rnd returns values in [0, 1) and draws the jitter; nil
// means math/rand/v2. Next never overflows, whatever attempt is, and
// never returns a time before now.
func (s Schedule) Next(attempt int, first, now time.Time, rnd func() float64) (next time.Time, giveUp bool) {
	d := s.delay(attempt)
	if s.Jitter > 0 {
		if rnd == nil {
			rnd = rand.Float64
		}
		r := rnd()
		if !(r >= 0) { // NaN too
			r = 0
		}
		d = scale(d, 1-s.Jitter+2*s.Jitter*min(r, 1))
	}
	next = now.Add(d)
	return next, next.After(first.Add(s.Window))
}

// delay is min(Max, Base·2^(attempt-1)), doubling rather than shifting so
// that a large attempt stops at Max instead of overflowing.
func (s Schedule) delay(attempt int) time.Duration {
	d := max(s.Base, 0)
	for i := 1; i < attempt && d > 0 && d < s.Max; i++ {
		if d > s.Max/2 {
			d = s.Max
			break
		}
		d *= 2
	}
	return max(min(d, s.Max), 0)
}

// scale returns d·f, saturating rather than overflowing and never negative.
func scale(d time.Duration, f float64) time.Duration {
	x := float64(d) * f
	switch {
	case !(x > 0):
		return 0
	case x >= math.MaxInt64:
		return math.MaxInt64
	}
	return time.Duration(x)
}
