package cachefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
)

var (
	errS3Closed     = errors.New("cachefs: read from a closed S3 object")
	errRangeIgnored = errors.New("the server ignored a Range request; the origin must support them")
	errStalled      = errors.New("the connection stalled")
)

// s3Source is one version of one object, as Open found it.
type s3Source struct {
	o              *S3Origin
	ctx            context.Context
	key, obj, etag string
	size           int64
}

// get GETs bytes start..end (inclusive) of the object, as long as it
// still has the ETag Open saw. A GET that delivers nothing for
// StallTimeout, headers or body, fails with errStalled.
func (s *s3Source) get(start, end int64) (io.ReadCloser, error) {
	stall := s.o.cfg.StallTimeout
	ctx, cancel := context.WithCancel(s.ctx)
	timer := time.AfterFunc(stall, cancel)
	body, err := s.getCtx(ctx, start, end)
	if err != nil {
		timer.Stop()
		err = s.stalled(ctx, err)
		cancel()
		return nil, err
	}
	return &stallBody{s: s, ctx: ctx, body: body, timer: timer, cancel: cancel}, nil
}

// stalled marks an error caused by the stall timer as errStalled.
func (s *s3Source) stalled(ctx context.Context, err error) error {
	if ctx.Err() != nil && s.ctx.Err() == nil {
		return fmt.Errorf("no bytes for %s: %w", s.o.cfg.StallTimeout, errStalled)
	}
	return err
}

func (s *s3Source) getCtx(ctx context.Context, start, end int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if s.etag != "" {
		if err := opts.SetMatchETag(s.etag); err != nil {
			return nil, err
		}
	}
	ranged := start > 0 || end < s.size-1
	if ranged {
		if err := opts.SetRange(start, end); err != nil {
			return nil, err
		}
	}
	body, _, h, err := s.o.read.GetObject(ctx, s.o.cfg.Bucket, s.obj, opts)
	if err != nil {
		return nil, err
	}
	// A server that ignores Range sends the object from byte 0, which
	// would be spliced in at start.
	if want := fmt.Sprintf("bytes %d-%d/", start, end); ranged && !strings.HasPrefix(h.Get("Content-Range"), want) {
		body.Close()
		return nil, fmt.Errorf("asked for %q, got Content-Range %q: %w", want, h.Get("Content-Range"), errRangeIgnored)
	}
	return body, nil
}

// stallBody is a GET's body whose stall timer restarts on every read.
type stallBody struct {
	s      *s3Source
	ctx    context.Context
	body   io.ReadCloser
	timer  *time.Timer
	cancel context.CancelFunc
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil {
		return n, b.s.stalled(b.ctx, err)
	}
	b.timer.Reset(b.s.o.cfg.StallTimeout)
	return n, nil
}

func (b *stallBody) Close() error {
	b.timer.Stop()
	err := b.body.Close()
	b.cancel() // after Close, so a drained connection goes back to the pool
	return err
}

// s3Stream reads an object as one GET and, when the connection breaks,
// goes on with a GET of the rest.
type s3Stream struct {
	s3Source
	cancel context.CancelFunc
	retry  retrier
	off    int64
	body   io.ReadCloser
	err    error // sticky
}

func (s *s3Stream) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if err := s.ctx.Err(); err != nil {
		s.err = s.o.fail("read", s.key, err)
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if s.off >= s.size {
			return 0, io.EOF
		}
		if s.body == nil {
			body, err := s.get(s.off, s.size-1)
			if err != nil {
				if err := s.retry.wait(s.ctx, "get", s.key, err); err != nil {
					s.err = s.o.fail(fmt.Sprintf("read from byte %d of", s.off), s.key, err)
					return 0, s.err
				}
				continue
			}
			s.body = body
		}
		if rem := s.size - s.off; int64(len(p)) > rem {
			p = p[:rem]
		}
		n, err := s.body.Read(p)
		s.off += int64(n)
		if n > 0 {
			s.retry.progress()
		}
		if err != nil {
			s.body.Close()
			s.body = nil
			if s.off < s.size {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				if err := s.retry.wait(s.ctx, "resume", s.key, err); err != nil {
					s.err = s.o.fail(fmt.Sprintf("read from byte %d of", s.off), s.key, err)
					if n == 0 {
						return 0, s.err
					}
				}
			}
		}
		if n > 0 {
			return n, nil
		}
	}
}

func (s *s3Stream) Close() error {
	s.cancel()
	if s.body != nil {
		s.body.Close()
		s.body = nil
	}
	if s.err == nil {
		s.err = errS3Closed
	}
	return nil
}

// s3ParallelReader reads an object as ranges of PartSize bytes, up to
// Parallel of them at once, and returns their bytes strictly in order.
//
// It owns a window of Parallel buffers. A dispatcher takes a free buffer,
// then starts a worker to fill it with the next chunk; the worker hands
// the full buffer to that chunk's channel. Read takes the chunks in order
// and gives each buffer back once its bytes are read, which lets the
// dispatcher start the next chunk. So at most Parallel chunks are in
// memory, fetched or being read, and a slow chunk holds back the ones
// after it by at most Parallel-1 chunks. Each worker retries and resumes
// its own range; the first chunk that fails for good fails Read.
type s3ParallelReader struct {
	s3Source
	cancel context.CancelFunc
	part   int64
	chunks []chan s3Chunk // one per chunk, buffered, so workers never block
	free   chan []byte
	wg     sync.WaitGroup

	// Read's state; Read and Close are not called concurrently.
	next   int    // the chunk Read takes next
	held   []byte // the buffer of the chunk being read
	cur    []byte // its unread bytes
	err    error  // sticky
	closed bool
}

type s3Chunk struct {
	buf []byte
	err error
}

func newS3ParallelReader(src s3Source, cancel context.CancelFunc) *s3ParallelReader {
	part := src.o.cfg.PartSize
	n := int((src.size + part - 1) / part)
	window := min(src.o.cfg.Parallel, n)
	r := &s3ParallelReader{
		s3Source: src,
		cancel:   cancel,
		part:     part,
		chunks:   make([]chan s3Chunk, n),
		free:     make(chan []byte, window),
	}
	for i := range r.chunks {
		r.chunks[i] = make(chan s3Chunk, 1)
	}
	for range window {
		r.free <- nil // allocated by the first worker to use it
	}
	r.wg.Add(1)
	go r.dispatch()
	return r
}

func (r *s3ParallelReader) dispatch() {
	defer r.wg.Done()
	for i := range r.chunks {
		var buf []byte
		select {
		case buf = <-r.free:
		case <-r.ctx.Done():
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.chunks[i] <- r.fetch(i, buf)
		}()
	}
}

// fetch fills buf with chunk i, resuming from the byte it reached when a
// GET breaks off.
func (r *s3ParallelReader) fetch(i int, buf []byte) s3Chunk {
	start := int64(i) * r.part
	end := min(start+r.part, r.size)
	if buf == nil {
		buf = make([]byte, r.part)
	}
	buf = buf[:end-start]
	retry := r.o.newRetrier()
	for got := 0; got < len(buf); {
		body, err := r.get(start+int64(got), end-1)
		if err == nil {
			var n int
			n, err = io.ReadFull(body, buf[got:])
			body.Close()
			got += n
			if got == len(buf) {
				break
			}
			if n > 0 {
				retry.progress()
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
		}
		if err := retry.wait(r.ctx, "get part", r.key, err); err != nil {
			return s3Chunk{err: r.o.fail(fmt.Sprintf("read bytes %d-%d of", start+int64(got), end-1), r.key, err)}
		}
	}
	return s3Chunk{buf: buf}
}

func (r *s3ParallelReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if err := r.ctx.Err(); err != nil {
		r.err = r.o.fail("read", r.key, err)
		return 0, r.err
	}
	for len(r.cur) == 0 {
		if r.held != nil {
			r.free <- r.held[:cap(r.held)]
			r.held = nil
		}
		if r.next == len(r.chunks) {
			return 0, io.EOF
		}
		select {
		case c := <-r.chunks[r.next]:
			if c.err != nil {
				r.err = c.err
				return 0, r.err
			}
			r.next++
			r.held, r.cur = c.buf, c.buf
		case <-r.ctx.Done():
			r.err = r.o.fail("read", r.key, r.ctx.Err())
			return 0, r.err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops every GET and waits for the workers, so no goroutine or
// buffer outlives it.
func (r *s3ParallelReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.cancel()
	r.wg.Wait()
	r.held, r.cur, r.chunks = nil, nil, nil
	for len(r.free) > 0 {
		<-r.free
	}
	if r.err == nil {
		r.err = errS3Closed
	}
	return nil
}
