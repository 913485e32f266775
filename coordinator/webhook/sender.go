package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Sender posts signed messages.
type Sender struct {
	Client    *http.Client // nil: a default with dial and TLS timeouts
	Secret    Secret
	Timeout   time.Duration // per attempt; 0: 10 s
	UserAgent string
}

// Result is one attempt's outcome. Err is nil when the receiver answered
// 2xx; Retry says whether trying again could help.
type Result struct {
	Status   int
	Err      error
	Duration time.Duration
	Retry    bool
}

var defaultClient = &http.Client{
	Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
	},
	// A redirect is a failure: the signature was made for this URL's
	// receiver, and following redirects would let it bounce us anywhere.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// Send makes one delivery attempt. It never takes longer than the timeout,
// even when the receiver accepts the connection and never answers.
func (s *Sender) Send(ctx context.Context, url, msgID string, ts time.Time, body []byte) Result {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	hc := s.Client
	if hc == nil {
		hc = defaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Result{Err: fmt.Errorf("bad webhook request: %v", err)}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderID, msgID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(s.Secret, msgID, ts, body))
	if s.UserAgent != "" {
		req.Header.Set("User-Agent", s.UserAgent)
	}
	resp, err := hc.Do(req)
	if err != nil {
		r := Result{Duration: time.Since(start), Retry: true}
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			r.Err = fmt.Errorf("timed out after %s", timeout)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			r.Err = fmt.Errorf("connection closed before an answer: %v", err)
		default:
			r.Err = fmt.Errorf("could not deliver: %v", err)
		}
		return r
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	r := Result{Status: resp.StatusCode, Duration: time.Since(start)}
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		r.Err, r.Retry = fmt.Errorf("receiver answered %d", c), true
	default:
		r.Err = fmt.Errorf("receiver answered %d; not retrying", c)
	}
	return r
}
