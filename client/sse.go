package client

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// parseEventID parses an id line's value.
func parseEventID(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("client: event id %q is not a decimal uint64: %w", s, err)
	}
	return n, nil
}

// maxLineSize bounds one line of a stream a SSEReader accepts, so that a
// broken server cannot make it buffer without limit.
const maxLineSize = 16 << 20

// errUnterminated is how SSEReader's split function reports a stream that
// ended inside a line.
var errUnterminated = errors.New("client: event stream ended inside a line")

// SSEReader parses a text/event-stream per the WHATWG HTML specification
// (server-sent events, "interpreting an event stream"): lines end with LF,
// CRLF or CR; a leading BOM is skipped; comments, retry and unknown fields
// are skipped; data lines are joined with LF; a blank line dispatches an
// event if it had at least one data line. Unlike EventSource, a SSEReader
// reports each event's own id (0 without an id line) rather than carrying
// the last one forward; the caller keeps its Last-Event-ID.
type SSEReader struct {
	s       *bufio.Scanner
	started bool // past the first line (and its BOM)
	afterCR bool // the last line ended with CR: an LF right after belongs to it
}

// NewSSEReader returns an SSEReader of r. Lines longer than 16 MiB are an error.
func NewSSEReader(r io.Reader) *SSEReader {
	rd := &SSEReader{s: bufio.NewScanner(r)}
	rd.s.Buffer(make([]byte, 0, 4096), maxLineSize)
	rd.s.Split(rd.split)
	return rd
}

// Next returns the next event. An id line that is not a decimal uint64 makes Next return
// an error for that event; the following call reads on. At the end of the
// stream Next returns io.EOF, or io.ErrUnexpectedEOF if it ended inside
// an event (which, per the spec, is discarded).
func (r *SSEReader) Next() (Event, error) {
	var ev Event
	var data []byte
	var idErr error
	hasData, pending := false, false
	for r.s.Scan() {
		line := r.s.Bytes()
		if !r.started {
			r.started = true
			line = bytes.TrimPrefix(line, []byte("\uFEFF"))
		}
		if len(line) == 0 {
			if !hasData {
				// The spec dispatches nothing without data (a retry
				// block, say) and starts the next event afresh.
				ev, idErr, pending = Event{}, nil, false
				continue
			}
			if idErr != nil {
				return Event{}, idErr
			}
			if data == nil {
				data = []byte{}
			}
			ev.Data = data
			return ev, nil
		}
		if line[0] == ':' {
			continue
		}
		pending = true
		field, value, found := bytes.Cut(line, []byte(":"))
		if found {
			value = bytes.TrimPrefix(value, []byte(" "))
		}
		switch string(field) {
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
		case "event":
			ev.Type = string(value)
		case "id":
			if bytes.IndexByte(value, 0) >= 0 {
				break // the spec ignores such ids
			}
			ev.ID, idErr = parseEventID(string(value))
		}
	}
	switch err := r.s.Err(); {
	case errors.Is(err, errUnterminated):
		return Event{}, io.ErrUnexpectedEOF
	case errors.Is(err, bufio.ErrTooLong):
		return Event{}, fmt.Errorf("client: event stream line longer than %d bytes: %w", maxLineSize, err)
	case err != nil:
		return Event{}, err
	case pending:
		return Event{}, io.ErrUnexpectedEOF
	}
	return Event{}, io.EOF
}

// split is a bufio.SplitFunc for the spec's three line ends. A CR ends its
// line at once, so a CR-only stream is not held up waiting for the next
// byte; an LF that then follows is skipped.
func (r *SSEReader) split(data []byte, atEOF bool) (int, []byte, error) {
	if r.afterCR && len(data) > 0 {
		r.afterCR = false
		if data[0] == '\n' {
			return 1, nil, nil
		}
	}
	i := bytes.IndexByte(data, '\n')
	if cr := bytes.IndexByte(data, '\r'); cr >= 0 && (i < 0 || cr < i) {
		i = cr
	}
	switch {
	case i < 0 && atEOF && len(data) > 0:
		return 0, nil, errUnterminated
	case i < 0:
		return 0, nil, nil
	case data[i] == '\n':
		return i + 1, data[:i], nil
	case i+1 < len(data):
		if data[i+1] == '\n' {
			return i + 2, data[:i], nil
		}
		return i + 1, data[:i], nil
	}
	r.afterCR = true
	return i + 1, data[:i], nil
}
