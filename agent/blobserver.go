package agent

import (
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
	"github.com/valyala/fasthttp"
)

// PeerHeader names the requesting host on GET /v1/blobs/{digest}; the
// upload rate limit is kept per name.
const PeerHeader = "X-Hearth-Peer"

// serveBlob answers GET /v1/blobs/{digest} for another host of the pool:
// the blob's bytes from this host's cache, whole or one byte range, at no
// more than the per-peer upload rate. Only a caller with the pool's peer
// token is served; the bytes are the verified blob, and the fetching host
// verifies them again against the digest it asked for.
func (a *Agent) serveBlob(ctx *fasthttp.RequestCtx, digest string) {
	if a.cfg.PeerToken == "" {
		blobError(ctx, fasthttp.StatusForbidden, "peer_serving_off", "this host serves no blobs to peers: no peer token is configured")
		return
	}
	auth := string(ctx.Request.Header.Peek("Authorization"))
	got, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.PeerToken)) != 1 {
		blobError(ctx, fasthttp.StatusForbidden, "not_a_member", "blobs are served only to members of this pool: send the pool's peer token as a bearer token")
		return
	}
	d := proto.Digest(digest)
	if err := d.Validate(); err != nil {
		blobError(ctx, fasthttp.StatusBadRequest, "bad_digest", err.Error())
		return
	}
	f, unpin, size, err := a.openBlob(d)
	if err != nil {
		blobError(ctx, fasthttp.StatusNotFound, "not_cached", err.Error())
		return
	}
	start, end := int64(0), size-1
	status := fasthttp.StatusOK
	if r := ctx.Request.Header.Peek("Range"); len(r) > 0 {
		s, e, err := fasthttp.ParseByteRange(r, int(size))
		if err != nil {
			f.Close()
			unpin()
			ctx.Response.Header.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			blobError(ctx, fasthttp.StatusRequestedRangeNotSatisfiable, "bad_range", fmt.Sprintf("range %q does not fit the blob's %d bytes", r, size))
			return
		}
		start, end, status = int64(s), int64(e), fasthttp.StatusPartialContent
		ctx.Response.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, size))
	}
	if f == nil { // a download in progress: only the chunks it has written
		if f, err = a.cache.OpenPartial(d, start, end-start+1); err != nil {
			// It may have completed since openBlob looked.
			if f, unpin, _, err = a.openBlob(d); err != nil || f == nil {
				blobError(ctx, fasthttp.StatusNotFound, "not_cached", fmt.Sprintf("this host has not yet written bytes %d-%d of %s", start, end, d))
				return
			}
		}
	}
	n := end - start + 1
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/octet-stream")
	ctx.Response.Header.Set("Accept-Ranges", "bytes")
	ctx.Response.Header.Set("Digest", "sha-256="+d.Hex())
	var body io.Reader = io.NewSectionReader(f, start, n)
	if a.cfg.PeerRateBytesPerSec > 0 {
		body = a.peerLimiter(string(ctx.Request.Header.Peek(PeerHeader))).reader(body)
	}
	ctx.SetBodyStream(&blobBody{Reader: body, close: func(sent int64) {
		f.Close()
		unpin()
		a.peerBytesServed.Add(float64(sent))
	}}, int(n))
}

// openBlob opens d's cached blob, pinned so that it is not evicted while a
// peer reads it. For a blob this host is still downloading it returns a nil
// file and the blob's size: the caller opens the range it wants with
// OpenPartial.
func (a *Agent) openBlob(d proto.Digest) (f *os.File, unpin func(), size int64, err error) {
	path, ok := a.cache.Path(d)
	if !ok {
		if size, ok := a.cache.PartialSize(d); ok {
			return nil, func() {}, size, nil
		}
		return nil, nil, 0, fmt.Errorf("this host does not hold %s", d)
	}
	if unpin, err = a.cache.Pin(d); err != nil {
		return nil, nil, 0, err
	}
	if f, err = os.Open(path); err != nil {
		unpin()
		return nil, nil, 0, fmt.Errorf("this host does not hold %s any more", d)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		unpin()
		return nil, nil, 0, err
	}
	return f, unpin, fi.Size(), nil
}

// blobBody releases the file and the pin once fasthttp has sent the body.
type blobBody struct {
	io.Reader
	close func(sent int64)
	sent  int64
	once  sync.Once
}

func (b *blobBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	b.sent += int64(n)
	return n, err
}

// WriteTo sends the body in large pieces. Left to Read, fasthttp copies a
// stream 4 KiB at a time, a read and a write per page, which held a peer
// transfer to an eighth of what loopback TCP carries.
func (b *blobBody) WriteTo(w io.Writer) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	var sent int64
	for {
		n, err := b.Read(*bp)
		if n > 0 {
			m, werr := w.Write((*bp)[:n])
			sent += int64(m)
			if werr != nil {
				return sent, werr
			}
		}
		if err == io.EOF {
			return sent, nil
		}
		if err != nil {
			return sent, err
		}
	}
}

// SupportsBodyWriteTo tells fasthttp to use WriteTo.
func (b *blobBody) SupportsBodyWriteTo() bool { return true }

// copyBufs holds the buffers blob bodies are sent through.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func (b *blobBody) Close() error {
	b.once.Do(func() { b.close(b.sent) })
	return nil
}

func blobError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`, code, msg))
}

// peerLimiter returns the upload limiter for one requesting peer: each peer
// gets the configured rate, so one greedy host cannot take this host's
// whole uplink from the others.
func (a *Agent) peerLimiter(peer string) *rateLimiter {
	a.limMu.Lock()
	defer a.limMu.Unlock()
	if a.limiters == nil {
		a.limiters = make(map[string]*rateLimiter)
	}
	l, ok := a.limiters[peer]
	if !ok {
		l = &rateLimiter{rate: float64(a.cfg.PeerRateBytesPerSec), burst: float64(max(a.cfg.PeerRateBytesPerSec/4, 1<<20)),
			now: time.Now, sleep: time.Sleep}
		l.tokens, l.last = l.burst, time.Now()
		a.limiters[peer] = l
	}
	return l
}

// rateLimiter is a token bucket in bytes, shared by every transfer to one
// peer.
type rateLimiter struct {
	mu          sync.Mutex
	rate, burst float64
	tokens      float64
	last        time.Time
	now         func() time.Time    // time.Now; tests use a fake
	sleep       func(time.Duration) // time.Sleep; tests record instead
}

// wait blocks until n bytes may go out.
func (l *rateLimiter) wait(n int) {
	l.mu.Lock()
	now := l.now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	var d time.Duration
	if l.tokens < 0 {
		d = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if d > 0 {
		l.sleep(d)
	}
}

func (l *rateLimiter) reader(r io.Reader) io.Reader { return &limitedReader{r: r, l: l} }

type limitedReader struct {
	r io.Reader
	l *rateLimiter
}

func (lr *limitedReader) Read(p []byte) (int, error) {
	// Small reads keep the pacing smooth at low rates.
	if max := int(lr.l.burst); len(p) > max {
		p = p[:max]
	}
	n, err := lr.r.Read(p)
	if n > 0 {
		lr.l.wait(n)
	}
	return n, err
}

// parseBlobPath returns the digest of a /v1/blobs/{digest} path.
func parseBlobPath(path string) (string, bool) {
	return strings.CutPrefix(path, "/v1/blobs/")
}
