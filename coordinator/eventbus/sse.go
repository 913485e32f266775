package eventbus

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// WriteEvent writes ev in text/event-stream form and flushes:
//
//	id: <ID>
//	event: <Type>
//	data: <Data>
//
// An event with ID 0 gets no id line, so it does not move the client's
// Last-Event-ID (hearth's ids start at 1). An empty Type gets no event
// line (EventSource calls that a "message"). Data with line breaks (LF,
// CRLF or CR) becomes one data line per line, which a reader joins with
// LF. A Type with a line break is refused: it would end the field early
// and let the rest pass for other fields.
func WriteEvent(w *bufio.Writer, ev Event) error {
	if strings.ContainsAny(ev.Type, "\r\n") {
		return fmt.Errorf("eventbus: event type %q contains a line break", ev.Type)
	}
	if ev.ID != 0 {
		var num [20]byte
		w.WriteString("id: ")
		w.Write(strconv.AppendUint(num[:0], ev.ID, 10))
		w.WriteByte('\n')
	}
	if ev.Type != "" {
		w.WriteString("event: ")
		w.WriteString(ev.Type)
		w.WriteByte('\n')
	}
	writeLines(w, "data: ", ev.Data)
	w.WriteByte('\n')
	return w.Flush() // bufio's errors stick, so this reports any write's
}

// WriteComment writes text as a comment (a keep-alive, which readers
// skip) and flushes: ": text", one such line per line of text.
func WriteComment(w *bufio.Writer, text string) error {
	writeLines(w, ": ", []byte(text))
	w.WriteByte('\n')
	return w.Flush()
}

// WriteRetry tells the client how long to wait before reconnecting
// ("retry: <ms>"), and flushes.
func WriteRetry(w *bufio.Writer, d time.Duration) error {
	var num [20]byte
	w.WriteString("retry: ")
	w.Write(strconv.AppendInt(num[:0], max(d.Milliseconds(), 0), 10))
	w.WriteString("\n\n")
	return w.Flush()
}

// writeLines writes prefix+line+LF for each line of text, which may end
// lines with LF, CRLF or CR.
func writeLines(w *bufio.Writer, prefix string, text []byte) {
	for {
		// JSON from encoding/json has no raw line breaks: two vectorised
		// scans usually settle it.
		i := bytes.IndexByte(text, '\n')
		if cr := bytes.IndexByte(text, '\r'); cr >= 0 && (i < 0 || cr < i) {
			i = cr
		}
		w.WriteString(prefix)
		if i < 0 {
			w.Write(text)
			w.WriteByte('\n')
			return
		}
		w.Write(text[:i])
		w.WriteByte('\n')
		if text[i] == '\r' && i+1 < len(text) && text[i+1] == '\n' {
			i++
		}
		text = text[i+1:]
	}
}

// ParseLastEventID parses a Last-Event-ID header (or ?after=) value: ""
// is 0, otherwise a decimal uint64. The error wraps strconv.ErrSyntax or
// strconv.ErrRange.
func ParseLastEventID(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err == nil {
		return n, nil
	}
	if errors.Is(err, strconv.ErrRange) {
		return 0, fmt.Errorf("eventbus: event id %q is above the largest possible id, %d: %w", s, uint64(1<<64-1), strconv.ErrRange)
	}
	return 0, fmt.Errorf("eventbus: event id %q is not a decimal number (want the id of the last event received, e.g. 1234): %w", s, strconv.ErrSyntax)
}
