package eventbus

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
)

func TestWriteEventWire(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := WriteRetry(w, 2500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := WriteEvent(w, Event{ID: 7, Type: "state", JobID: "j", Data: []byte("a\nb\r\nc\rd")}); err != nil {
		t.Fatal(err)
	}
	if err := WriteComment(w, "keep-alive"); err != nil {
		t.Fatal(err)
	}
	if err := WriteEvent(w, Event{Type: "end", Data: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	want := "retry: 2500\n\n" +
		"id: 7\nevent: state\ndata: a\ndata: b\ndata: c\ndata: d\n\n" +
		": keep-alive\n\n" +
		"event: end\ndata: {}\n\n"
	if buf.String() != want {
		t.Fatalf("wrote\n%q\nwant\n%q", buf.String(), want)
	}
	if err := WriteEvent(w, Event{ID: 1, Type: "state\ndata: forged"}); err == nil {
		t.Fatal("a type with a line break was written")
	}
}

func TestSSERoundTrip(t *testing.T) {
	events := []Event{
		{ID: 1, Type: "state", Data: []byte(`{"state":"queued"}`)},
		{ID: 2, Type: "progress", Data: []byte("line one\nline two\n")},
		{ID: 3, Type: "placement", Data: []byte("")},
		{ID: 4, Data: []byte(" leading space\n\nblank line above")},
		{ID: 0, Type: "end", Data: []byte("data: not a field")},
		{ID: 1<<64 - 1, Type: "state", Data: []byte(":not a comment")},
	}
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	WriteRetry(w, time.Second)
	for i, e := range events {
		if err := WriteEvent(w, e); err != nil {
			t.Fatal(err)
		}
		if err := WriteComment(w, "keep-alive "+strconv.Itoa(i)+"\nsecond line"); err != nil {
			t.Fatal(err)
		}
	}
	r := client.NewSSEReader(&buf)
	for _, want := range events {
		got, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("read %d %q %q, wrote %d %q %q", got.ID, got.Type, got.Data, want.ID, want.Type, want.Data)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func TestParseLastEventID(t *testing.T) {
	for s, want := range map[string]uint64{"": 0, "0": 0, "42": 42, "18446744073709551615": 1<<64 - 1} {
		if got, err := ParseLastEventID(s); got != want || err != nil {
			t.Errorf("ParseLastEventID(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for s, want := range map[string]error{
		"x":                    strconv.ErrSyntax,
		"-1":                   strconv.ErrSyntax,
		"+1":                   strconv.ErrSyntax,
		" 1":                   strconv.ErrSyntax,
		"1.5":                  strconv.ErrSyntax,
		"0x10":                 strconv.ErrSyntax,
		"18446744073709551616": strconv.ErrRange,
	} {
		_, err := ParseLastEventID(s)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), strconv.Quote(s)) {
			t.Errorf("ParseLastEventID(%q): %v, want one naming the value and wrapping %v", s, err, want)
		}
	}
}
