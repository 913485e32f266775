package cachefs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkPut puts a 256 MiB blob and, in the same run on the same disk,
// measures two baselines: a plain io.Copy of the same bytes to a file, and
// the same copy followed by fsync (Put syncs too). The gap between put_MB/s
// and copy_fsync_MB/s is the price of hashing.
func BenchmarkPut(b *testing.B) {
	const size = 256 << 20
	data, d := testBlob(size, 1)
	dir := b.TempDir()
	s, err := Open(Config{Dir: filepath.Join(dir, "cache"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	baseline := filepath.Join(dir, "baseline")
	ctx := context.Background()

	var putDur, copyDur, syncDur time.Duration
	var runs int
	b.SetBytes(size)
	for b.Loop() {
		copyDur += timeCopy(b, baseline, data, false)
		syncDur += timeCopy(b, baseline, data, true)

		start := time.Now()
		if _, _, err := s.Put(ctx, d, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		putDur += time.Since(start)
		if err := s.Remove(d); err != nil {
			b.Fatal(err)
		}
		runs++
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(runs) / 1e6 / d.Seconds() }
	b.ReportMetric(mbps(putDur), "put_MB/s")
	b.ReportMetric(mbps(copyDur), "copy_MB/s")
	b.ReportMetric(mbps(syncDur), "copy_fsync_MB/s")
}

// timeCopy writes data to path with a plain io.Copy (and fsync if asked)
// and returns how long that took.
func timeCopy(b *testing.B, path string, data []byte, sync bool) time.Duration {
	start := time.Now()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	if err := os.Remove(path); err != nil {
		b.Fatal(err)
	}
	return took
}
