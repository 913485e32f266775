package eventbus

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"time"
)

// WriteEvent writes ev in text/event-stream form and flushes. An event
// with ID 0 carries no id line, so it does not move the client's
// Last-Event-ID.
func WriteEvent(w *bufio.Writer, ev Event) error {
	if ev.ID != 0 {
		fmt.Fprintf(w, "id: %d\n", ev.ID)
	}
	if ev.Type != "" {
		fmt.Fprintf(w, "event: %s\n", ev.Type)
	}
	for line := range bytes.SplitSeq(ev.Data, []byte("\n")) {
		w.WriteString("data: ")
		w.Write(line)
		w.WriteByte('\n')
	}
	w.WriteByte('\n')
	return w.Flush()
}

// WriteComment writes a comment line (a keep-alive) and flushes.
func WriteComment(w *bufio.Writer, text string) error {
	fmt.Fprintf(w, ": %s\n\n", text)
	return w.Flush()
}

// WriteRetry tells the client how long to wait before reconnecting.
func WriteRetry(w *bufio.Writer, d time.Duration) error {
	fmt.Fprintf(w, "retry: %d\n\n", d.Milliseconds())
	return w.Flush()
}

// ParseLastEventID parses a Last-Event-ID: empty is 0.
func ParseLastEventID(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("must be a decimal event id")
	}
	return n, nil
}
