package webhook

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
)

const (
	defaultTimeout   = 10 * time.Second
	defaultUserAgent = "hearth-webhook"
	maxAnswer        = 64 << 10 // bytes of a receiver's answer read, so the connection can be reused
)

// Sender posts signed messages to receivers, one attempt per Send. Its
// fields are read by Send and must not change while Sends run; a Sender is
// otherwise safe for concurrent use.
type Sender struct {
	Client    *http.Client  // nil: a shared client with dial and TLS timeouts; redirects are never followed either way
	Secret    Secret        // signs every message
	Timeout   time.Duration // bounds one attempt, from DNS lookup to the last byte read; 0 means 10 s
	UserAgent string        // "" means "hearth-webhook"
}

// Result is the outcome of one attempt. Err is nil when the receiver
// answered 2xx, and otherwise says what happened in one sentence; Retry
// says whether trying again could help. Status is the receiver's answer,
// 0 when there was none.
type Result struct {
	Status   int
	Err      error
	Duration time.Duration
	Retry    bool
}

// defaultClient serves every Sender without a Client, so connections to a
// receiver are pooled across them.
var defaultClient = &http.Client{
	Transport: &http.Transport{
		Proxy:               http.ProxyFromEnvironment, // egress through the operator's proxy, as every other client does
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	},
	CheckRedirect: noRedirects,
}

// noRedirects makes a 3xx the answer: a signed message goes to the URL the
// user gave and nowhere else, and a receiver must not be able to bounce
// hearth's requests to other hosts.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// errAttemptTimeout is the cause of the context of an attempt that ran past
// Sender.Timeout, so it can be told from the caller's own cancellation.
var errAttemptTimeout = errors.New("webhook attempt timed out")

// Send makes one delivery attempt: a POST of body with Content-Type
// application/json and the three signature headers. It returns within
// Timeout even when the receiver accepts the connection and never
// answers, or answers slowly. 2xx is delivered; 408, 429, 5xx, timeouts
// and network errors are worth retrying; any other answer, 3xx included,
// is final.
func (s *Sender) Send(ctx context.Context, url, msgID string, ts time.Time, body []byte) Result {
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errAttemptTimeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Result{Err: fmt.Errorf("webhook URL is not usable: %v", unwrapURLError(err))}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", cmp.Or(s.UserAgent, defaultUserAgent))
	req.Header.Set(HeaderID, msgID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(s.Secret, msgID, ts, body))

	resp, err := s.client().Do(req)
	if err != nil {
		return Result{Err: describe(ctx, err, timeout), Duration: time.Since(start), Retry: true}
	}
	// The status is the answer; the body is read only so the connection can
	// be reused, and a slow or endless one is cut by the context.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()

	r := Result{Status: resp.StatusCode, Duration: time.Since(start)}
	switch c := resp.StatusCode; {
	case c >= 200 && c < 300:
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		r.Err, r.Retry = fmt.Errorf("receiver answered %d", c), true
	case c >= 300 && c < 400:
		r.Err = fmt.Errorf("receiver answered %d, a redirect, which webhooks do not follow; use the final URL", c)
	default:
		r.Err = fmt.Errorf("receiver answered %d, a refusal that retrying will not change", c)
	}
	return r
}

// client is s.Client with redirects turned off, or the default.
func (s *Sender) client() *http.Client {
	if s.Client == nil {
		return defaultClient
	}
	c := *s.Client
	c.CheckRedirect = noRedirects
	return &c
}

// describe turns a failed request into one sentence.
func describe(ctx context.Context, err error, timeout time.Duration) error {
	if ctx.Err() != nil {
		if context.Cause(ctx) == errAttemptTimeout {
			return fmt.Errorf("timed out after %s", timeout)
		}
		return fmt.Errorf("stopped before an answer: %v", context.Cause(ctx))
	}
	err = unwrapURLError(err)
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("connection closed before an answer: %v", err)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("could not resolve the receiver's host: %v", err)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("could not connect to the receiver: %v", err)
	}
	return fmt.Errorf("request failed: %v", err)
}

// unwrapURLError drops the `Post "http://…":` prefix: the URL can carry a
// token, and the caller knows where it sent the request.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
