package runner

import (
	"slices"
	"strings"
	"testing"
)

func TestLineWriterSplitsAcrossWrites(t *testing.T) {
	var lines []string
	overlong := 0
	w := &lineWriter{max: 8, fn: func(l []byte) { lines = append(lines, string(l)) }, overlong: func() { overlong++ }}
	for _, chunk := range []string{"ab", "c\nde", "f\n\n", "0123456789abc", "def\nok\ntail"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", chunk, n, err)
		}
	}
	w.Flush()
	if want := []string{"abc", "def", "", "ok", "tail"}; !slices.Equal(lines, want) {
		t.Fatalf("lines = %q, want %q", lines, want)
	}
	if overlong != 1 {
		t.Fatalf("overlong reported %d times, want 1", overlong)
	}
}

func TestTailBufferKeepsWholeLastLines(t *testing.T) {
	tb := &tailBuffer{max: 32}
	for _, l := range []string{"first line that goes", "second", "third line", "fourth"} {
		tb.AddLine([]byte(l))
	}
	got := tb.String()
	if got != "second\nthird line\nfourth" {
		t.Fatalf("tail = %q", got)
	}
	for range 100 {
		tb.AddLine([]byte(strings.Repeat("x", 10)))
	}
	if got := tb.String(); len(got) > 32 || !strings.HasPrefix(got, "x") {
		t.Fatalf("tail after many lines = %q", got)
	}
}
