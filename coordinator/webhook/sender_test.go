package webhook

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestReceiver(t *testing.T, secret Secret) *Receiver {
	t.Helper()
	r, err := NewReceiver(secret)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// waitAttempts polls until the receiver has seen n requests.
func waitAttempts(t *testing.T, r *Receiver, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if len(r.Attempts()) >= n {
			return
		}
	}
	t.Fatalf("receiver saw %d requests, want %d", len(r.Attempts()), n)
}

// TestSenderAgainstReceiverFaults sends one message through every fault
// the receiver can script, then lets it through.
func TestSenderAgainstReceiverFaults(t *testing.T) {
	rcv := newTestReceiver(t, testSecret)
	// A generous timeout, so a busy machine cannot turn an answer into a
	// timeout; only the FaultTimeout attempt uses the short one.
	s := &Sender{Secret: testSecret, Timeout: time.Minute}
	short := &Sender{Secret: testSecret, Timeout: 200 * time.Millisecond}
	cases := []struct {
		fault  Fault
		status int
		retry  bool
		err    string // part of Result.Err; "" for delivered
	}{
		{FaultStatus500, 500, true, "receiver answered 500"},
		{FaultStatus410, 410, false, "receiver answered 410"},
		{FaultTimeout, 0, true, "timed out after 200ms"},
		{FaultCloseConn, 0, true, "connection closed before an answer"},
		{FaultStatus500, 500, true, "receiver answered 500"}, // after a closed connection, a fresh one works
		{FaultNone, 204, false, ""},
	}
	for _, c := range cases {
		rcv.Script(c.fault)
	}
	ts := time.Now()
	body := []byte(`{"type":"job.succeeded"}`)
	for i, c := range cases {
		sender := s
		if c.fault == FaultTimeout {
			sender = short
		}
		r := sender.Send(context.Background(), rcv.URL(), "msg_x", ts, body)
		t.Logf("%s: %+v", c.fault, r)
		switch {
		case r.Status != c.status || r.Retry != c.retry:
			t.Fatalf("attempt %d, %s: status %d retry %v, want %d %v (err %v)", i+1, c.fault, r.Status, r.Retry, c.status, c.retry, r.Err)
		case c.err == "" && r.Err != nil:
			t.Fatalf("attempt %d, %s: %v, want delivered", i+1, c.fault, r.Err)
		case c.err != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), c.err)):
			t.Fatalf("attempt %d, %s: error %v, want one saying %q", i+1, c.fault, r.Err, c.err)
		}
	}
	attempts := rcv.Attempts()
	if len(attempts) != len(cases) {
		t.Fatalf("receiver saw %d requests, want %d: %+v", len(attempts), len(cases), attempts)
	}
	for i, a := range attempts {
		if a.Fault != cases[i].fault || a.ID != "msg_x" || a.At.IsZero() {
			t.Errorf("attempt %d: %+v, want fault %s and id msg_x", i+1, a, cases[i].fault)
		}
	}
	d := rcv.Deliveries()
	if len(d) != 1 {
		t.Fatalf("%d deliveries, want 1", len(d))
	}
	if !d[0].Verified || d[0].ID != "msg_x" || !bytes.Equal(d[0].Body, body) || d[0].Timestamp.Unix() != ts.Unix() {
		t.Fatalf("delivery %+v", d[0])
	}
	if ct, ua := d[0].Header.Get("Content-Type"), d[0].Header.Get("User-Agent"); ct != "application/json" || ua != "hearth-webhook" {
		t.Fatalf("Content-Type %q, User-Agent %q", ct, ua)
	}
}

// TestReceiverVerifies: the receiver marks a message it cannot verify,
// so tests elsewhere can check what hearth signs.
func TestReceiverVerifies(t *testing.T) {
	rcv := newTestReceiver(t, testSecret)
	now := time.Now()
	for _, c := range []struct {
		secret Secret
		ts     time.Time
		want   bool
	}{
		{testSecret, now, true},
		{otherSecret, now, false},
		{testSecret, now.Add(-time.Hour), false},
	} {
		r := (&Sender{Secret: c.secret, UserAgent: "test-agent"}).Send(context.Background(), rcv.URL(), "m", c.ts, []byte(`{}`))
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	d := rcv.Deliveries()
	if len(d) != 3 || !d[0].Verified || d[1].Verified || d[2].Verified {
		t.Fatalf("deliveries %+v; want only the first verified", d)
	}
	if ua := d[0].Header.Get("User-Agent"); ua != "test-agent" {
		t.Fatalf("User-Agent %q", ua)
	}
}

// TestSenderTimeoutAgainstSilentServer: a receiver that accepts the
// connection and never reads or answers cannot hold Send past Timeout.
func TestSenderTimeoutAgainstSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	r := (&Sender{Secret: testSecret, Timeout: 200 * time.Millisecond}).Send(context.Background(), "http://"+ln.Addr().String()+"/", "m", time.Now(), bytes.Repeat([]byte("x"), 4<<20))
	if r.Err == nil || !r.Retry || r.Status != 0 || !strings.Contains(r.Err.Error(), "timed out after 200ms") {
		t.Fatalf("silent server: %+v", r)
	}
}

// TestSenderSlowAnswerIsCut: an answer whose body never ends is cut at the
// timeout; the status already counts.
func TestSenderSlowAnswerIsCut(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.Write(bytes.Repeat([]byte("x"), 1<<10))
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	// Long enough for the status line to arrive on a busy machine.
	r := (&Sender{Secret: testSecret, Timeout: 2 * time.Second}).Send(context.Background(), srv.URL, "m", time.Now(), nil)
	if r.Err != nil || r.Status != 200 {
		t.Fatalf("slow answer: %+v", r)
	}
}

// TestSenderLargeAnswer: a receiver answering megabytes does not make Send
// read them all.
func TestSenderLargeAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for range 1 << 10 { // 64 MiB, unless the client stops reading
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	r := (&Sender{Secret: testSecret}).Send(context.Background(), srv.URL, "m", time.Now(), nil)
	if r.Err != nil || r.Status != 200 {
		t.Fatalf("large answer: %+v", r)
	}
}

// TestSenderStatuses: which answers are delivered, retried, or final; a
// redirect is never followed, with the default client or a caller's.
func TestSenderStatuses(t *testing.T) {
	target := newTestReceiver(t, testSecret) // where redirects point
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		if code >= 300 && code < 400 {
			w.Header().Set("Location", target.URL())
		}
		w.WriteHeader(code)
	}))
	defer srv.Close()
	delivered := []int{200, 201, 202, 204, 299}
	retried := []int{408, 429, 500, 502, 503, 504}
	final := []int{301, 302, 303, 307, 308, 400, 401, 403, 404, 405, 410, 413, 422}
	for _, client := range []*http.Client{nil, {}} {
		s := &Sender{Secret: testSecret, Client: client}
		send := func(code int) Result {
			return s.Send(context.Background(), srv.URL+"/"+strconv.Itoa(code), "m", time.Now(), []byte(`{}`))
		}
		for _, code := range delivered {
			if r := send(code); r.Err != nil || r.Status != code {
				t.Errorf("%d: %+v, want delivered", code, r)
			}
		}
		for _, code := range retried {
			if r := send(code); r.Err == nil || !r.Retry || r.Status != code {
				t.Errorf("%d: %+v, want a retry", code, r)
			}
		}
		for _, code := range final {
			r := send(code)
			if r.Err == nil || r.Retry || r.Status != code {
				t.Errorf("%d: %+v, want a final failure", code, r)
			}
			if code < 400 && !strings.Contains(r.Err.Error(), "redirect") {
				t.Errorf("%d: %v, want it to say redirects are not followed", code, r.Err)
			}
		}
	}
	if n := len(target.Attempts()); n != 0 {
		t.Fatalf("a redirect was followed: the target got %d requests", n)
	}
}

func TestSenderRequestErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := "http://" + ln.Addr().String() + "/"
	ln.Close()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	s := &Sender{Secret: testSecret, Timeout: 5 * time.Second}
	for _, c := range []struct {
		name  string
		ctx   context.Context
		url   string
		retry bool
		err   string
	}{
		{"connection refused", context.Background(), closedPort, true, "could not connect"},
		{"caller cancelled", cancelled, closedPort, true, "stopped before an answer"},
		{"bad URL", context.Background(), "http://[::1", false, "not usable"},
	} {
		r := s.Send(c.ctx, c.url, "m", time.Now(), nil)
		t.Logf("%s: %+v", c.name, r)
		if r.Err == nil || r.Retry != c.retry || r.Status != 0 || !strings.Contains(r.Err.Error(), c.err) {
			t.Errorf("%s: %+v, want retry %v and an error saying %q", c.name, r, c.retry, c.err)
		}
	}
}

// TestReceiverCloseReleasesHeldRequest: a request held by FaultTimeout
// ends when the receiver closes, and its client gets no answer (not an
// empty 200 that would count as delivered).
func TestReceiverCloseReleasesHeldRequest(t *testing.T) {
	rcv := newTestReceiver(t, testSecret)
	rcv.Script(FaultTimeout)
	done := make(chan Result, 1)
	go func() {
		done <- (&Sender{Secret: testSecret, Timeout: 2 * time.Minute}).Send(context.Background(), rcv.URL(), "m", time.Now(), nil)
	}()
	waitAttempts(t, rcv, 1)
	rcv.Close()
	r := <-done
	if r.Err == nil || r.Status != 0 || !r.Retry || strings.Contains(r.Err.Error(), "timed out") {
		t.Fatalf("held request after Close: %+v", r)
	}
	if _, err := rcv.Wait(context.Background(), 1); err == nil {
		t.Fatal("Wait on a closed receiver returned no error")
	}
	rcv.Close() // twice is fine
}

// TestReceiverConcurrent sends many messages at once, some scripted to
// fail, and waits for the rest.
func TestReceiverConcurrent(t *testing.T) {
	rcv := newTestReceiver(t, testSecret)
	rcv.Script(FaultStatus500, FaultCloseConn, FaultStatus410)
	const n = 20
	s := &Sender{Secret: testSecret}
	var wg sync.WaitGroup
	results := make([]Result, n)
	for i := range n {
		wg.Go(func() {
			results[i] = s.Send(context.Background(), rcv.URL(), "msg_"+strconv.Itoa(i), time.Now(), []byte(`{}`))
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := rcv.Wait(ctx, n-3)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
		}
	}
	if failed != 3 || len(rcv.Deliveries()) != n-3 || len(rcv.Attempts()) != n {
		t.Fatalf("%d failed, %d delivered, %d attempts; want 3, %d, %d", failed, len(rcv.Deliveries()), len(rcv.Attempts()), n-3, n)
	}
	for _, d := range got {
		if !d.Verified {
			t.Fatalf("unverified delivery %s", d.ID)
		}
	}

	short, cancel2 := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel2()
	if _, err := rcv.Wait(short, n+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait for more than will come: %v", err)
	}
}

func TestFaultString(t *testing.T) {
	for f, want := range map[Fault]string{FaultNone: "none", FaultTimeout: "timeout", FaultCloseConn: "close-conn", Fault(99): "Fault(99)"} {
		if f.String() != want {
			t.Errorf("Fault %d: %q, want %q", int(f), f.String(), want)
		}
	}
}
