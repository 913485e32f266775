package webhook

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"
)

// Schedule is a retry schedule (see the package comment).
type Schedule struct {
	Base, Max, Window time.Duration
	Jitter            float64
}

// DefaultSchedule retries after about 1 s, 2 s, 4 s, … up to every 10 min,
// for 24 h.
var DefaultSchedule = Schedule{Base: time.Second, Max: 10 * time.Minute, Window: 24 * time.Hour, Jitter: 0.2}

// Validate reports a schedule that cannot work.
func (s Schedule) Validate() error {
	if s.Base <= 0 || s.Max < s.Base || s.Window <= 0 {
		return fmt.Errorf("need 0 < base (%s) <= max (%s) and a positive window (%s)", s.Base, s.Max, s.Window)
	}
	if s.Jitter < 0 || s.Jitter >= 1 {
		return fmt.Errorf("jitter %v must be in [0, 1)", s.Jitter)
	}
	return nil
}

// Next returns when to make the next attempt after the attempt-th (1-based)
// failed, and giveUp when that would be past the window that began with
// the first attempt. rnd returns values in [0, 1); nil uses math/rand/v2.
func (s Schedule) Next(attempt int, first, now time.Time, rnd func() float64) (next time.Time, giveUp bool) {
	if rnd == nil {
		rnd = rand.Float64
	}
	d := s.Max
	if attempt >= 1 && attempt <= 62 {
		if b := s.Base << (attempt - 1); b > 0 && b < s.Max && b>>(attempt-1) == s.Base {
			d = b
		}
	}
	if s.Jitter > 0 {
		d = time.Duration(float64(d) * (1 - s.Jitter + 2*s.Jitter*rnd()))
	}
	next = now.Add(d)
	return next, next.After(first.Add(s.Window))
}

// ValidateURL accepts absolute http(s) URLs to a host, optionally limited
// to allowHosts ("*.example.com" allows subdomains, not the apex).
func ValidateURL(raw string, allowHosts []string) error {
	if len(raw) > 2048 {
		return errors.New("webhook URL is longer than 2048 bytes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("webhook URL %q does not parse: %v", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("webhook URL scheme %q is not allowed; use http or https", u.Scheme)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("webhook URL %q has no host", raw)
	}
	if u.User != nil {
		return errors.New("webhook URL must not carry credentials (user:password@); the payload is signed instead")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return errors.New("webhook URL must not have a #fragment")
	}
	if len(allowHosts) == 0 {
		return nil
	}
	host := strings.ToLower(u.Hostname())
	for _, a := range allowHosts {
		a = strings.ToLower(a)
		if suffix, ok := strings.CutPrefix(a, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return nil
			}
		} else if host == a {
			return nil
		}
	}
	return fmt.Errorf("webhook host %q is not in this coordinator's allowlist", host)
}
