package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
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

// TestSSEReaderSpec feeds the reader streams written by hand, in the forms
// the WHATWG specification allows, beyond what the coordinator writes.
func TestSSEReaderSpec(t *testing.T) {
	type result struct {
		ID   uint64
		Type string
		Data string
	}
	for _, tc := range []struct {
		name, stream string
		want         []result
		err          error
	}{
		{"crlf", "id: 1\r\nevent: a\r\ndata: x\r\n\r\n", []result{{1, "a", "x"}}, io.EOF},
		{"cr", "id: 1\revent: a\rdata: x\rdata: y\r\r", []result{{1, "a", "x\ny"}}, io.EOF},
		{"mixed", "data: x\r\n\ndata: y\r\r\n", []result{{0, "", "x"}, {0, "", "y"}}, io.EOF},
		{"bom", "\uFEFFdata: x\n\n", []result{{0, "", "x"}}, io.EOF},
		{"no space", "id:5\nevent:t\ndata:x\n\n", []result{{5, "t", "x"}}, io.EOF},
		{"two spaces", "data:  x\n\n", []result{{0, "", " x"}}, io.EOF},
		{"bare field", "data\ndata\n\n", []result{{0, "", "\n"}}, io.EOF},
		{"skipped", ": c\nretry: 10\nfoo: bar\n\ndata: x\n\n", []result{{0, "", "x"}}, io.EOF},
		{"no data, no event", "id: 3\nevent: t\n\ndata: x\n\n", []result{{0, "", "x"}}, io.EOF},
		{"id with NUL ignored", "id: 4\x00\ndata: x\n\n", []result{{0, "", "x"}}, io.EOF},
		{"several blank lines", "\n\n\ndata: x\n\n\n\n", []result{{0, "", "x"}}, io.EOF},
		{"empty", "", nil, io.EOF},
		{"cut inside an event", "data: x\n\ndata: y\n", []result{{0, "", "x"}}, io.ErrUnexpectedEOF},
		{"cut inside a line", "data: x\n\ndata: y", []result{{0, "", "x"}}, io.ErrUnexpectedEOF},
		{"bad id", "id: x\ndata: y\n\n", nil, strconv.ErrSyntax},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One byte at a time, to split lines (and CRLFs) across reads.
			r := NewSSEReader(&oneByteReader{strings.NewReader(tc.stream)})
			for _, want := range tc.want {
				e, err := r.Next()
				if err != nil {
					t.Fatalf("got %v, want %+v", err, want)
				}
				if got := (result{e.ID, e.Type, string(e.Data)}); got != want {
					t.Fatalf("got %+v, want %+v", got, want)
				}
			}
			if _, err := r.Next(); !errors.Is(err, tc.err) {
				t.Fatalf("then %v, want %v", err, tc.err)
			}
		})
	}
}

func TestSSEReaderReadsOnAfterBadID(t *testing.T) {
	r := NewSSEReader(strings.NewReader("id: x\ndata: y\n\nid: 2\ndata: z\n\n"))
	if _, err := r.Next(); err == nil {
		t.Fatal("bad id accepted")
	}
	if e, err := r.Next(); err != nil || e.ID != 2 || string(e.Data) != "z" {
		t.Fatalf("next: %+v, %v", e, err)
	}
}

// oneByteReader returns at most one byte per Read.
type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}
