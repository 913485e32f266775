package cachefs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/hearth-gpu/hearth/internal/miniotest"
)

const s3TestBucket = "models"

// newS3Test starts a MinIO with the test bucket and returns it and an
// origin for it, with small parts so that a few MiB make several chunks,
// and retries paced in milliseconds.
func newS3Test(t *testing.T, configure func(*S3Config)) (*miniotest.Server, *S3Origin) {
	t.Helper()
	srv := miniotest.Start(t)
	srv.MakeBucket(t, s3TestBucket)
	return srv, newS3TestOrigin(t, srv, srv.Endpoint, configure)
}

func newS3TestOrigin(t *testing.T, srv *miniotest.Server, endpoint string, configure func(*S3Config)) *S3Origin {
	t.Helper()
	cfg := S3Config{
		Endpoint:  endpoint,
		Bucket:    s3TestBucket,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
		PartSize:  1 << 20,
		Parallel:  3,
		Backoff:   time.Millisecond,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	if configure != nil {
		configure(&cfg)
	}
	o, err := NewS3Origin(cfg)
	if err != nil {
		t.Fatalf("NewS3Origin: %v", err)
	}
	return o
}

func s3Put(t *testing.T, o *S3Origin, key string, b []byte) {
	t.Helper()
	n, err := o.Put(context.Background(), key, bytes.NewReader(b))
	if err != nil || n != int64(len(b)) {
		t.Fatalf("Put(%q) = %d, %v; want %d bytes", key, n, err, len(b))
	}
}

// s3Read opens key and reads it whole.
func s3Read(t *testing.T, o *S3Origin, key string) ([]byte, io.ReadCloser, error) {
	t.Helper()
	rc, size, err := o.Open(context.Background(), key)
	if err != nil {
		return nil, nil, err
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err == nil && size != int64(len(got)) {
		t.Fatalf("Open(%q) reported size %d, read %d bytes", key, size, len(got))
	}
	return got, rc, err
}

func TestS3OriginRoundTrip(t *testing.T) {
	srv, o := newS3Test(t, func(c *S3Config) { c.Prefix = "/prod/" })
	for _, tc := range []struct {
		name     string
		size     int
		parallel bool
	}{
		{"empty", 0, false},
		{"small", 100 << 10, false},
		{"under threshold", 2<<20 - 1, false},
		{"large", 5<<20 + 12345, true},
		{"whole parts", 6 << 20, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "ckpt/" + strings.ReplaceAll(tc.name, " ", "-") + ".safetensors"
			b, _ := testBlob(tc.size, uint64(tc.size))
			s3Put(t, o, key, b)
			got, rc, err := s3Read(t, o, key)
			if err != nil {
				t.Fatalf("read %q: %v", key, err)
			}
			if !bytes.Equal(got, b) {
				t.Fatalf("read %d bytes that differ from the %d put", len(got), len(b))
			}
			if _, ok := rc.(*s3ParallelReader); ok != tc.parallel {
				t.Fatalf("read %d bytes with %T; want parallel %v", tc.size, rc, tc.parallel)
			}
			// The prefix is part of the object's name.
			if _, err := srv.Client(t).StatObject(context.Background(), s3TestBucket, "prod/"+key, minio.StatObjectOptions{}); err != nil {
				t.Fatalf("object is not at its prefixed name: %v", err)
			}
		})
	}
	if got, want := o.String(), "s3://models/prod at "+srv.Endpoint; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestS3OriginNotFound(t *testing.T) {
	srv, o := newS3Test(t, nil)
	_, _, err := o.Open(context.Background(), "absent/model.safetensors")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing key: err = %v, want ErrNotFound", err)
	}
	noBucket := newS3TestOrigin(t, srv, srv.Endpoint, func(c *S3Config) { c.Bucket = "nobucket" })
	_, _, err = noBucket.Open(context.Background(), "k")
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `bucket "nobucket" does not exist`) {
		t.Fatalf("Open in a missing bucket: err = %v; want one that names the bucket", err)
	}
}

func TestS3OriginRejectsBadKeys(t *testing.T) {
	// Nothing listens on the endpoint: a bad key must fail before any request.
	o, err := NewS3Origin(S3Config{Endpoint: closedAddr(t), Bucket: "bucket", Retries: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, key := range []string{"", "../etc/passwd", "/abs/key", "a/../../b", "a//b", "a/./b"} {
		if _, _, err := o.Open(ctx, key); err == nil || !strings.Contains(err.Error(), "key") {
			t.Errorf("Open(%q): err = %v, want a key error", key, err)
		}
		if _, err := o.Put(ctx, key, strings.NewReader("x")); err == nil || !strings.Contains(err.Error(), "key") {
			t.Errorf("Put(%q): err = %v, want a key error", key, err)
		}
		if _, err := o.PresignGet(ctx, key, time.Hour); err == nil || !strings.Contains(err.Error(), "key") {
			t.Errorf("PresignGet(%q): err = %v, want a key error", key, err)
		}
	}
}

func TestNewS3OriginValidates(t *testing.T) {
	ok := S3Config{Endpoint: "127.0.0.1:9000", Bucket: "models"}
	for _, tc := range []struct {
		change func(*S3Config)
		want   string
	}{
		{func(c *S3Config) { c.Endpoint = "" }, "Endpoint is empty"},
		{func(c *S3Config) { c.Endpoint = "http://127.0.0.1:9000" }, "host:port only"},
		{func(c *S3Config) { c.Endpoint = "127.0.0.1:9000/models" }, "has a path"},
		{func(c *S3Config) { c.Bucket = "" }, "Bucket is empty"},
		{func(c *S3Config) { c.Bucket = "Bad_Bucket" }, "not a valid bucket name"},
		{func(c *S3Config) { c.Prefix = "a/../b" }, "Prefix"},
		{func(c *S3Config) { c.AccessKey = "ak" }, "both AccessKey and SecretKey"},
		{func(c *S3Config) { c.PartSize = -1 }, "PartSize"},
		{func(c *S3Config) { c.Parallel = -2 }, "Parallel"},
		{func(c *S3Config) { c.ParallelThreshold = -1 }, "ParallelThreshold"},
		{func(c *S3Config) { c.Backoff = -time.Second }, "Backoff"},
	} {
		cfg := ok
		tc.change(&cfg)
		if _, err := NewS3Origin(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewS3Origin(%+v): err = %v, want it to mention %q", cfg, err, tc.want)
		}
	}
	o, err := NewS3Origin(ok)
	if err != nil {
		t.Fatal(err)
	}
	c := o.Config()
	if c.PartSize != DefaultS3PartSize || c.Parallel != DefaultS3Parallel || c.ParallelThreshold != 2*DefaultS3PartSize ||
		c.Retries != DefaultS3Retries || c.Backoff != DefaultS3Backoff || c.Logger == nil {
		t.Fatalf("defaults not filled in: %+v", c)
	}
}

func TestS3OriginEnsureBucket(t *testing.T) {
	srv := miniotest.Start(t)
	o := newS3TestOrigin(t, srv, srv.Endpoint, nil)
	ctx := context.Background()
	for range 2 { // creating, then finding it
		if err := o.EnsureBucket(ctx); err != nil {
			t.Fatalf("EnsureBucket: %v", err)
		}
	}
	s3Put(t, o, "k", []byte("v"))

	wrong := newS3TestOrigin(t, srv, srv.Endpoint, func(c *S3Config) { c.SecretKey = "not-the-secret" })
	err := wrong.EnsureBucket(ctx)
	if err == nil || !strings.Contains(err.Error(), "check the access key and secret key") {
		t.Fatalf("EnsureBucket with a wrong secret: err = %v; want it to say to check the keys", err)
	}
	if _, _, err := wrong.Open(ctx, "k"); err == nil || !strings.Contains(err.Error(), "check the access key") {
		t.Fatalf("Open with a wrong secret: err = %v; want it to say to check the keys", err)
	}
}

func TestS3FetchIntoStore(t *testing.T) {
	_, o := newS3Test(t, nil)
	for _, size := range []int{300 << 10, 4<<20 + 7} {
		key := "ckpt/model.safetensors"
		b, d := testBlob(size, uint64(size))
		s3Put(t, o, key, b)
		s := openTestStore(t, t.TempDir(), 0, nil)
		p, fetched, err := s.Fetch(context.Background(), d, o, key)
		if err != nil || !fetched {
			t.Fatalf("Fetch(%d bytes) = %q, %v, %v", size, p, fetched, err)
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("fetched blob: %d bytes, %v; want the %d put", len(got), err, len(b))
		}
		if err := s.Verify(context.Background(), d); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		assertNoTemp(t, s)
	}
}

// A connection cut mid-body is resumed from the byte it reached, by the
// one stream and by each parallel range alike.
func TestS3OriginResumesCutConnections(t *testing.T) {
	for _, tc := range []struct {
		name     string
		size     int
		parallel bool
	}{
		{"stream", 3<<20 + 5, false},
		{"parallel", 6<<20 + 5, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, direct := newS3Test(t, nil)
			b, d := testBlob(tc.size, 300)
			s3Put(t, direct, "k", b)

			const cutAfter = 300 << 10
			p := startFaultProxy(t, srv.Endpoint)
			p.cutAfter = cutAfter
			p.cutsLeft.Store(3)
			setParallel := func(c *S3Config) {
				if !tc.parallel {
					c.Parallel = 1
				}
			}
			o := newS3TestOrigin(t, srv, p.addr(), setParallel)
			got, rc, err := s3Read(t, o, "k")
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("read through a cutting proxy: %d bytes, %v; want the %d put", len(got), err, len(b))
			}
			if _, ok := rc.(*s3ParallelReader); ok != tc.parallel {
				t.Fatalf("read with %T; want parallel %v", rc, tc.parallel)
			}
			if n := p.cuts.Load(); n != 3 {
				t.Fatalf("proxy cut %d connections, want 3", n)
			}
			// Resuming, not restarting: each cut costs headers, not the
			// bytes it had already delivered.
			if sent := p.sent.Load(); sent > int64(tc.size)+64<<10 {
				t.Fatalf("proxy forwarded %d bytes for a %d-byte object: the reader restarted instead of resuming", sent, tc.size)
			}

			// And the Store, reading through the same proxy (on new
			// connections: a fresh origin), ends in a verified blob.
			p.cutsLeft.Store(2)
			o = newS3TestOrigin(t, srv, p.addr(), setParallel)
			s := openTestStore(t, t.TempDir(), 0, nil)
			if _, _, err := s.Fetch(context.Background(), d, o, "k"); err != nil {
				t.Fatalf("Fetch through a cutting proxy: %v", err)
			}
			if n := p.cuts.Load(); n != 5 {
				t.Fatalf("proxy cut %d connections in all, want 5", n)
			}
			if err := s.Verify(context.Background(), d); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

// A connection that hangs mid-body is given up after StallTimeout and
// resumed like a broken one.
func TestS3OriginResumesStalledConnections(t *testing.T) {
	for _, parallel := range []int{1, 3} {
		srv, direct := newS3Test(t, nil)
		b, _ := testBlob(3<<20+5, 305)
		s3Put(t, direct, "k", b)
		p := startFaultProxy(t, srv.Endpoint)
		p.cutAfter, p.stall = 200<<10, true
		p.cutsLeft.Store(2)
		o := newS3TestOrigin(t, srv, p.addr(), func(c *S3Config) {
			c.Parallel = parallel
			c.StallTimeout = 50 * time.Millisecond
		})
		got, _, err := s3Read(t, o, "k")
		if err != nil || !bytes.Equal(got, b) {
			t.Fatalf("read (parallel %d) through a stalling proxy: %d bytes, %v; want the %d put", parallel, len(got), err, len(b))
		}
		if n := p.cuts.Load(); n != 2 {
			t.Fatalf("proxy stalled %d connections, want 2", n)
		}
	}
}

func TestS3FetchCorruptedBytesFails(t *testing.T) {
	for _, parallel := range []int{1, 3} {
		srv, direct := newS3Test(t, nil)
		b, d := testBlob(3<<20, 310)
		s3Put(t, direct, "k", b)
		p := startFaultProxy(t, srv.Endpoint)
		p.corrupt = b[2<<20 : 2<<20+32]
		o := newS3TestOrigin(t, srv, p.addr(), func(c *S3Config) { c.Parallel = parallel })
		s := openTestStore(t, t.TempDir(), 0, nil)
		_, _, err := s.Fetch(context.Background(), d, o, "k")
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Fetch through a corrupting proxy: err = %v, want ErrDigestMismatch", err)
		}
		if n := p.flips.Load(); n != 1+fetchRetries {
			t.Fatalf("proxy corrupted %d downloads, want %d (one try and %d retries)", n, 1+fetchRetries, fetchRetries)
		}
		if s.Has(d) {
			t.Fatalf("corrupted blob was cached")
		}
		assertNoTemp(t, s)
	}
}

func TestS3OriginDown(t *testing.T) {
	srv := miniotest.Start(t) // only for credentials; nothing listens at addr
	addr := closedAddr(t)
	o := newS3TestOrigin(t, srv, addr, func(c *S3Config) { c.Retries = 2 })
	ctx := context.Background()
	_, _, err := o.Open(ctx, "k")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Open on a down origin: err = %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, addr) || !strings.Contains(msg, "after 3 attempts") {
		t.Fatalf("Open on a down origin: error %q does not name the endpoint and the attempts", msg)
	}
	if err := o.EnsureBucket(ctx); err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("EnsureBucket on a down origin: err = %v", err)
	}
	if _, err := o.Put(ctx, "k", strings.NewReader("x")); err == nil || !strings.Contains(err.Error(), addr) ||
		!strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("Put on a down origin: err = %v; want it to name the endpoint and the attempts", err)
	}
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PutFile(ctx, "k", path, nil); err == nil || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("PutFile on a down origin: err = %v; want it to name the attempts", err)
	}
}

// An object replaced while it is read fails the read rather than
// splicing the two versions.
func TestS3OriginPinsETag(t *testing.T) {
	_, o := newS3Test(t, func(c *S3Config) { c.Parallel = 2 })
	old, _ := testBlob(6<<20, 320)
	s3Put(t, o, "k", old)
	rc, _, err := o.Open(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Chunk 2 cannot start before chunk 0's buffer is given back, which
	// is after the overwrite.
	if _, err := io.ReadFull(rc, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	updated, _ := testBlob(6<<20, 321)
	s3Put(t, o, "k", updated)
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "changed while it was being read") {
		t.Fatalf("read of a replaced object: err = %v; want it to say the object changed", err)
	}
}

func TestS3OriginOpenCancel(t *testing.T) {
	_, o := newS3Test(t, nil)
	b, _ := testBlob(6<<20, 330)
	s3Put(t, o, "k", b)
	ctx, cancel := context.WithCancel(context.Background())
	rc, _, err := o.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: err = %v, want context.Canceled", err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read after Close succeeded")
	}
}

func TestS3OriginPresignGet(t *testing.T) {
	_, o := newS3Test(t, nil)
	b, _ := testBlob(200<<10, 340)
	s3Put(t, o, "loras/detail.safetensors", b)
	u, err := o.PresignGet(context.Background(), "loras/detail.safetensors", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("GET presigned URL: %s, %d bytes, %v; want 200 and the %d put", resp.Status, len(got), err, len(b))
	}
	if _, err := o.PresignGet(context.Background(), "k", 8*24*time.Hour); err == nil {
		t.Fatalf("PresignGet with an expiry over 7 days succeeded")
	}
}

func TestS3OriginPutFile(t *testing.T) {
	_, o := newS3Test(t, nil)
	b, _ := testBlob(11<<20+3, 350)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var calls, last, total int64
	n, err := o.PutFile(context.Background(), "ckpt/model.safetensors", path, func(done, tot int64) {
		// PutFile promises calls one at a time, so plain ints suffice
		// (and the race detector checks the promise).
		calls++
		if done < last {
			t.Errorf("progress went back from %d to %d", last, done)
		}
		last, total = done, tot
	})
	if err != nil || n != int64(len(b)) {
		t.Fatalf("PutFile = %d, %v; want %d", n, err, len(b))
	}
	if calls == 0 || last != int64(len(b)) || total != int64(len(b)) {
		t.Fatalf("progress: %d calls, last %d of %d; want it to end at %d of %d", calls, last, total, len(b), len(b))
	}
	got, _, err := s3Read(t, o, "ckpt/model.safetensors")
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("read back: %d bytes, %v", len(got), err)
	}
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// faultProxy forwards TCP connections on 127.0.0.1 to target and damages
// what the server sends back: it cuts (or, with stall, stops forwarding
// on) the first cutsLeft connections that reach cutAfter bytes, and flips
// a byte inside every occurrence of corrupt. The server's answers are only
// observed as a byte stream, so neither fault needs to parse HTTP.
type faultProxy struct {
	ln     net.Listener
	target string

	cutAfter int64
	cutsLeft atomic.Int64
	stall    bool
	corrupt  []byte

	cuts, flips, sent atomic.Int64

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startFaultProxy(t *testing.T, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *faultProxy) addr() string { return p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		p.wg.Go(func() {
			io.Copy(server, client)
			server.Close()
			client.Close()
		})
		p.wg.Go(func() {
			p.back(client, server)
			server.Close()
			client.Close()
		})
	}
}

// takeCut claims one of the cuts left, if any.
func (p *faultProxy) takeCut() bool {
	for {
		n := p.cutsLeft.Load()
		if n <= 0 {
			return false
		}
		if p.cutsLeft.CompareAndSwap(n, n-1) {
			p.cuts.Add(1)
			return true
		}
	}
}

// back copies the server's bytes to the client, applying the faults. To
// find corrupt across reads it holds back the longest tail that could
// begin it; answers never end in such a tail, so nothing stalls.
func (p *faultProxy) back(client, server net.Conn) {
	var sent int64
	var pending []byte
	cutChecked := false
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		pending = append(pending, buf[:n]...)
		if len(p.corrupt) > 0 {
			// A flipped occurrence no longer matches, so each is flipped once.
			for i := bytes.Index(pending, p.corrupt); i >= 0; i = bytes.Index(pending, p.corrupt) {
				pending[i+len(p.corrupt)/2] ^= 0xff
				p.flips.Add(1)
			}
		}
		keep := 0
		if len(p.corrupt) > 0 && err == nil {
			keep = prefixTail(pending, p.corrupt)
		}
		out := pending[:len(pending)-keep]
		if !cutChecked && p.cutAfter > 0 && sent+int64(len(out)) >= p.cutAfter {
			cutChecked = true
			if p.takeCut() {
				client.Write(out[:p.cutAfter-sent])
				p.sent.Add(p.cutAfter - sent)
				if p.stall {
					// Swallow the rest until the client gives up and
					// the other direction closes the connection.
					io.Copy(io.Discard, server)
				}
				return
			}
		}
		if _, werr := client.Write(out); werr != nil {
			return
		}
		sent += int64(len(out))
		p.sent.Add(int64(len(out)))
		pending = append(pending[:0], pending[len(out):]...)
		if err != nil {
			return
		}
	}
}

// prefixTail returns the length of the longest tail of b that is a proper
// prefix of pat.
func prefixTail(b, pat []byte) int {
	for k := min(len(b), len(pat)-1); k > 0; k-- {
		if bytes.Equal(b[len(b)-k:], pat[:k]) {
			return k
		}
	}
	return 0
}
