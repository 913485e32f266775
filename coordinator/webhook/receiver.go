package webhook

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Receiver is a webhook receiver for tests, here and in other packages: a
// real HTTP server on 127.0.0.1 that verifies each message with its secret
// and can be scripted to fail requests the ways real receivers do. It uses
// net/http rather than httptest so that non-test code (a dev cluster, a
// demo) may start one too. It is safe for concurrent use.
type Receiver struct {
	secret Secret
	ln     net.Listener
	srv    *http.Server
	stop   chan struct{} // closed by Close: releases held requests and waiters
	once   sync.Once

	mu         sync.Mutex
	script     []Fault
	attempts   []Attempt
	deliveries []Delivery
	changed    chan struct{} // closed and replaced on every request
}

// Fault is what the receiver does with one request.
type Fault int

const (
	FaultNone      Fault = iota // accept: record the delivery and answer 204
	FaultStatus500              // answer 500, which a sender retries
	FaultTimeout                // hold the request until the client gives up or the receiver closes
	FaultCloseConn              // close the connection without answering
	FaultStatus410              // answer 410 Gone, a refusal a sender must not retry
)

func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "none"
	case FaultStatus500:
		return "status-500"
	case FaultTimeout:
		return "timeout"
	case FaultCloseConn:
		return "close-conn"
	case FaultStatus410:
		return "status-410"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// Attempt is one request the receiver got, whatever it did with it.
type Attempt struct {
	ID    string    // the webhook-id header
	At    time.Time // arrival, on the receiver's clock
	Fault Fault
}

// Delivery is one message the receiver accepted (FaultNone).
type Delivery struct {
	ID        string    // the webhook-id header
	Timestamp time.Time // the webhook-timestamp header; zero if it was not Unix seconds
	Body      []byte
	Header    http.Header // every header of the request
	Verified  bool        // Verify passed with the receiver's secret and DefaultTolerance
}

// maxBody bounds what the receiver reads of one request.
const maxBody = 16 << 20

// NewReceiver starts a receiver on a free port of 127.0.0.1 that verifies
// with secret. Close it when done.
func NewReceiver(secret Secret) (*Receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("webhook: start a test receiver: %w", err)
	}
	r := &Receiver{secret: secret, ln: ln, stop: make(chan struct{}), changed: make(chan struct{})}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 10 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// URL is where to send webhooks.
func (r *Receiver) URL() string { return "http://" + r.ln.Addr().String() + "/hook" }

// Close stops the receiver and releases held requests; their clients see
// the connection close. Calling it again does nothing.
func (r *Receiver) Close() {
	r.once.Do(func() {
		r.srv.Close() // first, so a released request's connection is already gone
		close(r.stop)
	})
}

// Script queues what the next requests get, in order, after anything
// queued before; requests beyond the script are accepted (FaultNone).
func (r *Receiver) Script(faults ...Fault) {
	r.mu.Lock()
	r.script = append(r.script, faults...)
	r.mu.Unlock()
}

// Attempts returns every request so far, in arrival order.
func (r *Receiver) Attempts() []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Attempt(nil), r.attempts...)
}

// Deliveries returns the accepted messages so far, in arrival order.
func (r *Receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Wait returns the accepted messages once there are at least n, or those
// so far with an error when ctx ends or the receiver closes first.
func (r *Receiver) Wait(ctx context.Context, n int) ([]Delivery, error) {
	for {
		r.mu.Lock()
		got, ch := append([]Delivery(nil), r.deliveries...), r.changed
		r.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return got, fmt.Errorf("webhook: receiver got %d of %d deliveries: %w", len(got), n, ctx.Err())
		case <-r.stop:
			return got, fmt.Errorf("webhook: receiver closed after %d of %d deliveries", len(got), n)
		}
	}
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	// Read the whole body before any fault, so the client has finished
	// sending and sees exactly the scripted failure.
	body, _ := io.ReadAll(http.MaxBytesReader(w, req.Body, maxBody))
	now := time.Now()
	id := req.Header.Get(HeaderID)

	r.mu.Lock()
	f := FaultNone
	if len(r.script) > 0 {
		f, r.script = r.script[0], r.script[1:]
	}
	if f < FaultNone || f > FaultStatus410 {
		f = FaultNone
	}
	r.attempts = append(r.attempts, Attempt{ID: id, At: now, Fault: f})
	if f == FaultNone {
		d := Delivery{ID: id, Body: body, Header: req.Header.Clone(),
			Verified: Verify(r.secret, req.Header, body, now, DefaultTolerance) == nil}
		if unix, err := strconv.ParseInt(req.Header.Get(HeaderTimestamp), 10, 64); err == nil {
			d.Timestamp = time.Unix(unix, 0)
		}
		r.deliveries = append(r.deliveries, d)
	}
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()

	switch f {
	case FaultStatus500:
		http.Error(w, "scripted failure", http.StatusInternalServerError)
	case FaultStatus410:
		http.Error(w, "gone", http.StatusGone)
	case FaultTimeout:
		select {
		case <-req.Context().Done():
		case <-r.stop:
		}
		panic(http.ErrAbortHandler) // never an answer, not even an empty 200
	case FaultCloseConn:
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
			return
		}
		panic(http.ErrAbortHandler) // closes the connection too, without a log line
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
