package webhook

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Receiver is a real HTTP webhook receiver on 127.0.0.1 for tests: it
// verifies each message's signature and can be scripted to fail requests
// the ways real receivers do.
type Receiver struct {
	secret Secret
	ln     net.Listener
	srv    *http.Server
	stop   chan struct{}

	mu         sync.Mutex
	script     []Fault
	attempts   []Attempt
	deliveries []Delivery
	changed    chan struct{}
}

// Fault is what the receiver does with one request.
type Fault int

const (
	FaultNone      Fault = iota // verify and answer 200
	FaultStatus500              // answer 500
	FaultTimeout                // never answer (until the client gives up or the receiver closes)
	FaultCloseConn              // close the connection without answering
	FaultStatus410              // answer 410 Gone: a permanent refusal
)

// Attempt is one request the receiver got.
type Attempt struct {
	ID    string
	At    time.Time
	Fault Fault
}

// Delivery is one message the receiver accepted.
type Delivery struct {
	ID        string
	Timestamp string
	Body      []byte
	Verified  bool
}

// NewReceiver starts a receiver verifying with secret.
func NewReceiver(secret Secret) (*Receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Receiver{secret: secret, ln: ln, stop: make(chan struct{}), changed: make(chan struct{})}
	r.srv = &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	go r.srv.Serve(ln)
	return r, nil
}

// URL is where to send webhooks.
func (r *Receiver) URL() string { return "http://" + r.ln.Addr().String() + "/hook" }

// Close stops the receiver, releasing held requests.
func (r *Receiver) Close() {
	close(r.stop)
	r.srv.Close()
}

// Script sets what the next requests get, in order; requests beyond the
// script get FaultNone.
func (r *Receiver) Script(faults ...Fault) {
	r.mu.Lock()
	r.script = append(r.script, faults...)
	r.mu.Unlock()
}

// Attempts returns every request so far.
func (r *Receiver) Attempts() []Attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Attempt(nil), r.attempts...)
}

// Deliveries returns the accepted messages so far.
func (r *Receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Wait returns the accepted messages once there are at least n.
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
			return got, ctx.Err()
		}
	}
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 16<<20))
	r.mu.Lock()
	f := FaultNone
	if len(r.script) > 0 {
		f, r.script = r.script[0], r.script[1:]
	}
	r.attempts = append(r.attempts, Attempt{ID: req.Header.Get(HeaderID), At: time.Now(), Fault: f})
	if f == FaultNone {
		r.deliveries = append(r.deliveries, Delivery{ID: req.Header.Get(HeaderID), Timestamp: req.Header.Get(HeaderTimestamp), Body: body,
			Verified: Verify(r.secret, req.Header, body, time.Now(), 5*time.Minute) == nil})
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
	case FaultCloseConn:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
