package cachefs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkRAMRead copies a blob resident in the RAM tier into a buffer,
// in full, as a host→GPU staging copy would read it, and in the same run
// measures two baselines over the same bytes: copy() between two Go heap
// buffers (the memory bandwidth the tier can at best reach) and os.File.Read
// of the blob file from the page cache (what a loader gets without the
// tier, with the file already cached). The blob is 1 GiB unless
// HEARTH_BENCH_RAM_BYTES says otherwise. mlocked reports 1 if the blob's
// pages were locked, 0 if the tier fell back to the page cache.
func BenchmarkRAMRead(b *testing.B) {
	size := 1 << 30
	if v := os.Getenv("HEARTH_BENCH_RAM_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("HEARTH_BENCH_RAM_BYTES=%q: want a positive number of bytes", v)
		}
		size = n
	}
	data, d := testBlob(size, 3)
	s, err := Open(Config{Dir: filepath.Join(b.TempDir(), "cache"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Put(context.Background(), d, bytes.NewReader(data)); err != nil {
		b.Fatal(err)
	}
	r, err := NewRAMTier(s, RAMConfig{MaxBytes: int64(size), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if err := r.Promote(context.Background(), d); err != nil {
		b.Fatal(err)
	}
	resident, release, _ := r.Acquire(d)
	defer release()
	path, _ := s.Path(d)
	dst := make([]byte, size)
	copy(dst, data) // fault the destination in before timing

	var ramDur, heapDur, fileDur time.Duration
	var runs int
	for b.Loop() {
		start := time.Now()
		copy(dst, resident)
		ramDur += time.Since(start)

		start = time.Now()
		copy(dst, data)
		heapDur += time.Since(start)

		start = time.Now()
		readFileInto(b, path, dst)
		fileDur += time.Since(start)
		runs++
	}
	gbps := func(d time.Duration) float64 { return float64(size) * float64(runs) / 1e9 / d.Seconds() }
	b.ReportMetric(gbps(ramDur), "ram_GB/s")
	b.ReportMetric(gbps(heapDur), "memcpy_GB/s")
	b.ReportMetric(gbps(fileDur), "pagecache_GB/s")
	locked := 0.0
	if l := r.List(); len(l) == 1 && l[0].Locked {
		locked = 1
	}
	b.ReportMetric(locked, "mlocked")
}

func readFileInto(b *testing.B, path string, dst []byte) {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, dst); err != nil {
		b.Fatal(err)
	}
}
