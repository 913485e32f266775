package cachefs

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// BenchmarkDiskTier measures the NVMe tier against dd on the same disk in
// the same run: ingest is Put (hash, write, fsync, rename) vs `dd
// conv=fsync` of the same bytes; read is a blob read cold (dropped from the
// page cache) through the store's path vs `dd` of the same file, also cold.
// (Not `dd iflag=nocache`: dropping pages behind it spares dd the page
// reclaim that every real reader of a model pays, and made it up to three
// times faster than any reader that keeps what it reads.) HEARTH_BENCH_DISK_BYTES sets the size (default 1 GiB).
//
// Each write starts with nothing dirty, and the two sides take turns going
// first: on a virtual disk the write that follows another pays for the
// host's flush of the one before.
func BenchmarkDiskTier(b *testing.B) {
	size := envBytes(b, "HEARTH_BENCH_DISK_BYTES", 1<<30)
	if _, err := exec.LookPath("dd"); err != nil {
		b.Skip("dd is not installed; it is the baseline")
	}
	data, d := testBlob(int(size), 7)
	dir := b.TempDir()
	s, err := Open(Config{Dir: filepath.Join(dir, "cache"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	src := filepath.Join(dir, "source")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Medians, not sums: on a shared virtual disk one read in a few takes
	// four times as long, whichever program does it.
	var putDur, ddInDur, readDur, ddOutDur []time.Duration
	var runs int
	for b.Loop() {
		var p string
		put := func() {
			settle(b)
			start := time.Now()
			var err error
			if p, _, err = s.Put(ctx, d, bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			putDur = append(putDur, time.Since(start))
		}
		ddWrite := func() {
			settle(b)
			// dd reads its input from the page cache, as Put reads from memory.
			start := time.Now()
			dd(b, "if="+src, "of="+filepath.Join(dir, "dd-out"), "bs=1M", "conv=fsync")
			ddInDur = append(ddInDur, time.Since(start))
		}
		storeRead := func() {
			dropCache(b, p)
			start := time.Now()
			f, err := os.Open(p)
			if err != nil {
				b.Fatal(err)
			}
			// 1 MiB reads, as a worker streams a checkpoint (io.Copy into
			// io.Discard would use its own 8 KiB buffer).
			buf := make([]byte, copyBufSize)
			for {
				_, err := f.Read(buf)
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			f.Close()
			readDur = append(readDur, time.Since(start))
		}
		ddRead := func() {
			dropCache(b, p)
			start := time.Now()
			dd(b, "if="+p, "of=/dev/null", "bs=1M")
			ddOutDur = append(ddOutDur, time.Since(start))
		}
		if runs%2 == 0 {
			put()
			ddWrite()
			storeRead()
			ddRead()
		} else {
			ddWrite()
			put()
			ddRead()
			storeRead()
		}
		if err := s.Remove(d); err != nil {
			b.Fatal(err)
		}
		os.Remove(filepath.Join(dir, "dd-out"))
		runs++
	}
	mbps := func(ts []time.Duration) float64 {
		slices.Sort(ts)
		return float64(size) / 1e6 / ts[len(ts)/2].Seconds()
	}
	b.ReportMetric(mbps(putDur), "put_MB/s")
	b.ReportMetric(mbps(ddInDur), "dd_write_MB/s")
	b.ReportMetric(mbps(putDur)/mbps(ddInDur)*100, "put_%_of_dd")
	b.ReportMetric(mbps(readDur), "read_MB/s")
	b.ReportMetric(mbps(ddOutDur), "dd_read_MB/s")
	b.ReportMetric(mbps(readDur)/mbps(ddOutDur)*100, "read_%_of_dd")
}

// settle flushes every dirty page and gives the disk a moment, so one
// measurement does not pay for the writeback of the one before.
func settle(b *testing.B) {
	b.Helper()
	if err := exec.Command("sync").Run(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
}

func dd(b *testing.B, args ...string) {
	b.Helper()
	if out, err := exec.Command("dd", append(args, "status=none")...).CombinedOutput(); err != nil {
		b.Fatalf("dd %v: %v: %s", args, err, out)
	}
}

// dropCache evicts a synced file's pages from the page cache, so the next
// read comes from the disk.
func dropCache(b *testing.B, path string) {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		b.Fatal(err)
	}
}

func envBytes(b *testing.B, name string, def int64) int64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive byte count", name, v)
	}
	return n
}
