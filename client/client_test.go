package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSSEReader(t *testing.T) {
	stream := ": keep-alive\n\nid: 7\nevent: state\ndata: {\"a\":\ndata: 1}\n\nretry: 3000\n\nevent: end\ndata: {}\n\n"
	r := NewSSEReader(strings.NewReader(stream))
	ev, err := r.Next()
	if err != nil || ev.ID != 7 || ev.Type != "state" || string(ev.Data) != "{\"a\":\n1}" {
		t.Fatalf("first event %+v, %v", ev, err)
	}
	ev, err = r.Next()
	if err != nil || ev.ID != 0 || ev.Type != EventEnd {
		t.Fatalf("second event %+v, %v", ev, err)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("end of stream: %v", err)
	}
	if _, err := NewSSEReader(strings.NewReader("id: 1\ndata: x")).Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut-off event: %v", err)
	}
}

// A client given several nodes moves to the next when one cannot be
// reached, and stays there.
func TestFailoverToTheNextNode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	var hits int
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			return
		}
		io.WriteString(w, `{"status":"ok"}`)
	}))
	defer live.Close()
	c := New(dead+", "+live.URL, nil).WithToken("tok")
	ctx := context.Background()
	if _, err := c.Do(ctx, "GET", "/healthz", nil, nil); err == nil {
		t.Fatal("a call to a dead node succeeded")
	}
	if c.Base() != live.URL {
		t.Fatalf("after the failure the client uses %s, want %s", c.Base(), live.URL)
	}
	if _, err := c.Do(ctx, "GET", "/healthz", nil, nil); err != nil || hits != 1 {
		t.Fatalf("call on the live node: %v (hits %d)", err, hits)
	}
}
