package runner

import (
	"bytes"
	"strings"
	"sync"
)

// lineWriter splits what a child process writes into lines and hands each
// one (without its "\n") to fn. It is used as exec.Cmd's Stdout/Stderr, so
// os/exec owns the pipe and Cmd.Wait returns only after the last byte went
// through, which a pipe read by our own goroutine would not guarantee.
//
// A line longer than max is dropped; overlong, if set, is told once per such
// line. Write never fails, so a noisy child never blocks on its output.
type lineWriter struct {
	max      int
	fn       func(line []byte)
	overlong func()

	buf        []byte
	discarding bool // inside an overlong line, until its "\n"
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !w.discarding {
			if len(w.buf)+len(chunk) > w.max {
				w.buf = w.buf[:0]
				w.discarding = true
				if w.overlong != nil {
					w.overlong()
				}
			} else {
				w.buf = append(w.buf, chunk...)
			}
		}
		if i < 0 {
			break
		}
		if !w.discarding {
			w.fn(w.buf)
		}
		w.buf = w.buf[:0]
		w.discarding = false
		p = p[i+1:]
	}
	return n, nil
}

// Flush hands a last line that had no "\n" to fn. Call it after Cmd.Wait.
func (w *lineWriter) Flush() {
	if len(w.buf) > 0 && !w.discarding {
		w.fn(w.buf)
	}
	w.buf = w.buf[:0]
	w.discarding = false
}

// tailBuffer keeps the last max bytes of a stream of lines, so an error can
// quote what a process said just before it failed.
type tailBuffer struct {
	max int

	mu  sync.Mutex
	buf []byte
}

// AddLine appends one line and a "\n".
func (t *tailBuffer) AddLine(line []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, line...)
	t.buf = append(t.buf, '\n')
	// Compact only once the buffer is twice the limit, so appends stay cheap.
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
}

// String returns the kept tail, starting at a line boundary when it had to
// cut, without the final "\n".
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > t.max {
		b = b[len(b)-t.max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
	}
	return strings.TrimSuffix(string(b), "\n")
}

// quoteTail formats a stderr tail for an error message.
func quoteTail(tail string) string {
	if tail == "" {
		return " (stderr was empty)"
	}
	return "; last stderr:\n" + tail
}
