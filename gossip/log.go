package gossip

import (
	"context"
	"log/slog"
	"strings"
)

// logWriter turns memberlist's "[LEVEL] memberlist: message" lines into
// slog records at the matching level, and adds a hint where memberlist's
// own words do not say what to fix.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	level := slog.LevelInfo
	for prefix, l := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn,
		"[ERR]": slog.LevelError, "[ERROR]": slog.LevelError,
	} {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			level, line = l, strings.TrimSpace(rest)
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	args := []any{"source", "memberlist"}
	lower := strings.ToLower(line)
	switch {
	case strings.Contains(lower, "crypt"):
		args = append(args, "hint", "a member is probably using a different gossip key (SecretKeys)")
	case strings.Contains(lower, "unacceptable label"):
		args = append(args, "hint", "a member of another cluster (different Label) is talking to this one")
	}
	w.log.Log(context.Background(), level, line, args...)
	return len(b), nil
}
