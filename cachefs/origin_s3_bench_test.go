package cachefs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hearth-gpu/hearth/internal/miniotest"
	"github.com/hearth-gpu/hearth/proto"
)

// benchS3BytesEnv overrides the size of BenchmarkS3Fetch's object.
const benchS3BytesEnv = "HEARTH_BENCH_S3_BYTES"

// BenchmarkS3Fetch uploads one object (1 GiB, or HEARTH_BENCH_S3_BYTES) to
// a local MinIO and, for each reader setting, measures in the same run:
//
//   - single_MB/s: one plain minio-go GetObject streamed to io.Discard,
//     the baseline;
//   - origin_MB/s: S3Origin.Open with that setting, streamed to io.Discard;
//   - fetch_MB/s: Store.Fetch into an empty cache (hash, write, fsync);
//   - origin/single: the ratio of the first two.
//
// Over loopback the server, the client and the hashing share the same
// cores, so parallel ranges gain only what one connection leaves idle;
// against a remote object store, where one stream is bound by latency
// and per-connection limits, they gain far more.
func BenchmarkS3Fetch(b *testing.B) {
	size := int64(1 << 30)
	if v := os.Getenv(benchS3BytesEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive number of bytes", benchS3BytesEnv, v)
		}
		size = n
	}
	srv := miniotest.Start(b)
	srv.MakeBucket(b, "bench")
	ctx := context.Background()
	const key = "bench/model.safetensors"
	log := slog.New(slog.DiscardHandler)
	cfg := S3Config{Endpoint: srv.Endpoint, Bucket: "bench", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Logger: log}
	// The object's bytes are dropped once uploaded; only the digest stays.
	d := func() proto.Digest {
		data, d := testBlob(int(size), 1)
		up, err := NewS3Origin(cfg)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := up.Put(ctx, key, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		return d
	}()
	plain := srv.Client(b)

	for _, set := range []struct{ part, parallel int }{
		{DefaultS3PartSize >> 20, 1}, // one stream: the reader's own overhead
		{64, 8}, {16, 8}, {16, 4}, {8, 8},
	} {
		name := fmt.Sprintf("part=%dMiB/parallel=%d", set.part, set.parallel)
		b.Run(name, func(b *testing.B) {
			c := cfg
			c.PartSize, c.Parallel = int64(set.part)<<20, set.parallel
			o, err := NewS3Origin(c)
			if err != nil {
				b.Fatal(err)
			}
			var single, origin, fetch time.Duration
			var runs int
			for b.Loop() {
				single += timeRead(b, func() (io.ReadCloser, error) {
					return plain.GetObject(ctx, "bench", key, minio.GetObjectOptions{})
				}, size)
				origin += timeRead(b, func() (io.ReadCloser, error) {
					rc, _, err := o.Open(ctx, key)
					return rc, err
				}, size)
				fetch += timeFetch(b, o, key, d, log)
				runs++
			}
			mbps := func(d time.Duration) float64 { return float64(size) * float64(runs) / 1e6 / d.Seconds() }
			b.ReportMetric(mbps(single), "single_MB/s")
			b.ReportMetric(mbps(origin), "origin_MB/s")
			b.ReportMetric(mbps(fetch), "fetch_MB/s")
			b.ReportMetric(single.Seconds()/origin.Seconds(), "origin/single")
		})
	}
}

// timeRead times opening a reader and draining it to io.Discard.
func timeRead(b *testing.B, open func() (io.ReadCloser, error), size int64) time.Duration {
	start := time.Now()
	rc, err := open()
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil || n != size {
		b.Fatalf("read %d bytes, %v; want %d", n, err, size)
	}
	return time.Since(start)
}

// timeFetch times Store.Fetch into a new, empty cache.
func timeFetch(b *testing.B, o Origin, key string, d proto.Digest, log *slog.Logger) time.Duration {
	dir := filepath.Join(b.TempDir(), "cache")
	s, err := Open(Config{Dir: dir, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	defer s.Close()
	start := time.Now()
	if _, _, err := s.Fetch(context.Background(), d, o, key); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
