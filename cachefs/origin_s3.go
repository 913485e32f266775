package cachefs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/hearth-gpu/hearth/proto"
)

// Defaults for S3Config's zero fields. Over loopback (BenchmarkS3Fetch)
// part sizes of 8-64 MiB and 4-8 ranges at once all read at the same
// speed, so the defaults follow remote object stores, which serve 8-16 MiB
// ranges best, and keep a download's buffers to 128 MiB.
const (
	DefaultS3PartSize = 16 << 20
	DefaultS3Parallel = 8
	DefaultS3Retries  = 5
	DefaultS3Backoff  = 200 * time.Millisecond
	DefaultS3Stall    = time.Minute

	// maxS3Backoff caps the doubling backoff between attempts.
	maxS3Backoff = 10 * time.Second
	// minUploadPart is S3's smallest allowed multipart part.
	minUploadPart = 5 << 20
	// maxUploadPart is S3's largest allowed multipart part.
	maxUploadPart = 5 << 30
)

// S3Config says where an S3Origin's objects live and how it moves them.
type S3Config struct {
	// Endpoint is host:port of the S3 API, without a scheme.
	Endpoint string
	// Bucket holds the objects.
	Bucket string
	// Prefix, if set, is put before every key: key "sdxl/base" is the
	// object "<Prefix>/sdxl/base".
	Prefix string
	// AccessKey and SecretKey sign requests; both empty means anonymous.
	AccessKey, SecretKey string
	// Region of the bucket; empty asks the server once per bucket.
	Region string
	// Secure selects https.
	Secure bool
	// PartSize is the size of one ranged GET of a large object, and of one
	// uploaded part (at least S3's 5 MiB). 0 means DefaultS3PartSize.
	PartSize int64
	// Parallel is how many ranged GETs of one object run at once; a
	// download holds at most Parallel*PartSize bytes of buffers. 0 means
	// DefaultS3Parallel; 1 reads every object as one stream.
	Parallel int
	// ParallelThreshold is the size from which objects are read with
	// parallel ranged GETs; smaller ones are one stream. 0 means
	// 2*PartSize.
	ParallelThreshold int64
	// Retries bounds how often a request that failed transiently
	// (connection refused or reset, a timeout, a 5xx) is tried again in a
	// row; a stream that made progress since its last failure starts
	// counting afresh. 0 means DefaultS3Retries; negative means none.
	Retries int
	// Backoff is the wait before the first retry; it doubles on each
	// further one, up to 10s. 0 means DefaultS3Backoff.
	Backoff time.Duration
	// StallTimeout abandons a GET that has delivered nothing for this long
	// (a connection that hangs rather than breaks) and resumes it like a
	// broken one. 0 means DefaultS3Stall.
	StallTimeout time.Duration
	// Logger receives retries and resumes; nil means slog.Default().
	Logger *slog.Logger
}

// withDefaults fills cfg's zero fields and checks the rest.
func (cfg S3Config) withDefaults() (S3Config, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case cfg.Endpoint == "":
		bad("Endpoint is empty: set it to the host:port of the S3 API")
	case strings.Contains(cfg.Endpoint, "://"):
		bad("Endpoint %q has a scheme: give host:port only, and set Secure for https", cfg.Endpoint)
	case strings.ContainsAny(cfg.Endpoint, "/?#"):
		bad("Endpoint %q has a path: give host:port only", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		bad("Bucket is empty: name the bucket that holds the models")
	} else if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		bad("Bucket %q is not a valid bucket name: %v", cfg.Bucket, err)
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	if cfg.Prefix != "" {
		if err := proto.ValidateModelName(cfg.Prefix); err != nil {
			bad("Prefix %w", err)
		}
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		bad("set both AccessKey and SecretKey, or neither for anonymous access")
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultS3PartSize
	} else if cfg.PartSize < 0 || cfg.PartSize > maxUploadPart {
		bad("PartSize %d is out of range: use 1 byte to 5 GiB, or 0 for %d MiB", cfg.PartSize, DefaultS3PartSize>>20)
	}
	if cfg.Parallel == 0 {
		cfg.Parallel = DefaultS3Parallel
	} else if cfg.Parallel < 0 {
		bad("Parallel %d is negative: use 1 or more, or 0 for %d", cfg.Parallel, DefaultS3Parallel)
	}
	if cfg.ParallelThreshold == 0 {
		cfg.ParallelThreshold = 2 * cfg.PartSize
	} else if cfg.ParallelThreshold < 0 {
		bad("ParallelThreshold %d is negative: use a size in bytes, or 0 for twice PartSize", cfg.ParallelThreshold)
	}
	if cfg.Retries == 0 {
		cfg.Retries = DefaultS3Retries
	} else if cfg.Retries < 0 {
		cfg.Retries = 0
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = DefaultS3Backoff
	} else if cfg.Backoff < 0 {
		bad("Backoff %s is negative", cfg.Backoff)
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultS3Stall
	} else if cfg.StallTimeout < 0 {
		bad("StallTimeout %s is negative", cfg.StallTimeout)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(errs) > 0 {
		return cfg, fmt.Errorf("cachefs: s3 origin config: %w", errors.Join(errs...))
	}
	return cfg, nil
}

// S3Origin is an Origin backed by a bucket of an S3 API (AWS S3, MinIO).
//
// Open stats the object and pins its ETag: every GET that follows asks
// for that ETag (If-Match), so an object replaced during a download fails
// the download instead of splicing two objects' bytes. Objects smaller
// than ParallelThreshold are read as one GET stream that, when the
// connection breaks mid-body, resumes with a Range request from the byte
// it reached. Larger ones are read as PartSize ranges, Parallel at once,
// and handed to the reader in order (see s3ParallelReader).
//
// Requests that fail transiently are retried with a doubling backoff;
// errors that retrying cannot fix (a missing key or bucket, wrong
// credentials) fail at once and say what to change.
type S3Origin struct {
	cfg  S3Config
	name string
	// read does one HTTP request per call: reads retry and resume
	// themselves, which minio-go's own retries cannot do mid-body.
	read minio.Core
	// write retries inside minio-go, which can rewind its buffered parts
	// where Put, streaming from a reader, could not.
	write      *minio.Client
	uploadPart uint64
}

// NewS3Origin returns an origin for cfg. It does not contact the server;
// EnsureBucket does.
func NewS3Origin(cfg S3Config) (*S3Origin, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("cachefs: s3 origin %s: %w", cfg.Endpoint, err)
	}
	// Keep a connection per parallel range alive between parts.
	tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, 2*cfg.Parallel)
	opts := func(retries int) *minio.Options {
		return &minio.Options{
			Creds:      credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
			Secure:     cfg.Secure,
			Region:     cfg.Region,
			Transport:  tr,
			MaxRetries: retries,
		}
	}
	read, err := minio.New(cfg.Endpoint, opts(1))
	if err != nil {
		return nil, fmt.Errorf("cachefs: s3 origin %s: %w", cfg.Endpoint, err)
	}
	write, err := minio.New(cfg.Endpoint, opts(cfg.Retries+1))
	if err != nil {
		return nil, fmt.Errorf("cachefs: s3 origin %s: %w", cfg.Endpoint, err)
	}
	name := "s3://" + cfg.Bucket
	if cfg.Prefix != "" {
		name += "/" + cfg.Prefix
	}
	return &S3Origin{
		cfg:        cfg,
		name:       name + " at " + cfg.Endpoint,
		read:       minio.Core{Client: read},
		write:      write,
		uploadPart: uint64(max(cfg.PartSize, minUploadPart)),
	}, nil
}

// String names the origin as "s3://bucket/prefix at endpoint".
func (o *S3Origin) String() string { return o.name }

// Config returns the origin's configuration with its defaults filled in.
func (o *S3Origin) Config() S3Config { return o.cfg }

// object maps a key to its object name, checking the key first.
func (o *S3Origin) object(key string) (string, error) {
	if err := proto.ValidateModelName(key); err != nil {
		return "", fmt.Errorf("cachefs: %s: key %w", o, err)
	}
	if o.cfg.Prefix == "" {
		return key, nil
	}
	return o.cfg.Prefix + "/" + key, nil
}

// OpenRange returns bytes [off, off+n) of the object at key, in one ranged
// GET (retried while the server does not answer). The caller checks the
// bytes, so the object's ETag is not pinned as Open pins it.
func (o *S3Origin) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	obj, err := o.object(key)
	if err != nil {
		return nil, err
	}
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("cachefs: %s key %q: bad range %d+%d", o, key, off, n)
	}
	// size past the range's end makes get always send a Range header.
	src := s3Source{o: o, ctx: ctx, key: key, obj: obj, size: off + n + 1}
	var body io.ReadCloser
	err = o.retry(ctx, "get", key, func() (err error) {
		body, err = src.get(off, off+n-1)
		return err
	})
	if err != nil {
		return nil, o.fail("get", key, err)
	}
	return body, nil
}

// Open returns the object at key and its size. See S3Origin for how it
// reads; the returned reader yields the object's bytes in order, stops
// once ctx is done, and Close releases its connections and buffers.
func (o *S3Origin) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	obj, err := o.object(key)
	if err != nil {
		return nil, 0, err
	}
	var info minio.ObjectInfo
	err = o.retry(ctx, "stat", key, func() (err error) {
		info, err = o.read.StatObject(ctx, o.cfg.Bucket, obj, minio.StatObjectOptions{})
		return err
	})
	if err != nil {
		return nil, 0, o.fail("open", key, err)
	}
	rctx, cancel := context.WithCancel(ctx)
	src := s3Source{o: o, ctx: rctx, key: key, obj: obj, etag: info.ETag, size: info.Size}
	if o.cfg.Parallel > 1 && info.Size >= o.cfg.ParallelThreshold && info.Size > o.cfg.PartSize {
		return newS3ParallelReader(src, cancel), info.Size, nil
	}
	return &s3Stream{s3Source: src, cancel: cancel, retry: o.newRetrier()}, info.Size, nil
}

// Put uploads r under key as a multipart upload of PartSize parts. S3
// makes the object visible only when the upload completes, so readers
// never see part of it; a failed upload is aborted. A failed part is
// retried from its buffer; the whole upload is retried only if it failed
// before reading anything from r, which cannot be rewound.
func (o *S3Origin) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	cr := &countingReader{r: r}
	return o.put(ctx, key, cr, -1, nil, func() bool { return cr.n == 0 })
}

// PutFile uploads the file at path under key like Put, uploading parts in
// parallel, and reports progress to progress (if not nil) as bytes sent
// of the file's size; progress is never called concurrently.
func (o *S3Origin) PutFile(ctx context.Context, key, path string, progress func(done, total int64)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("cachefs: upload %s to %s: %w", path, o, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("cachefs: upload %s to %s: %w", path, o, err)
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("cachefs: upload %s to %s: not a regular file", path, o)
	}
	var hook io.Reader
	pc := &progressCounter{total: fi.Size(), fn: progress}
	if progress != nil {
		hook = pc
	}
	// A file can always start over.
	rewind := func() bool {
		pc.reset()
		_, err := f.Seek(0, io.SeekStart)
		return err == nil
	}
	// f itself, unwrapped: minio-go uploads an io.ReaderAt's parts in parallel.
	return o.put(ctx, key, f, fi.Size(), hook, rewind)
}

func (o *S3Origin) put(ctx context.Context, key string, r io.Reader, size int64, progress io.Reader, rewind func() bool) (int64, error) {
	obj, err := o.object(key)
	if err != nil {
		return 0, err
	}
	part := o.uploadPart
	// S3 allows 10,000 parts; a known size may need larger ones.
	if size > 0 {
		part = max(part, uint64((size+9_999)/10_000))
	}
	retry := o.newRetrier()
	for {
		info, err := o.write.PutObject(ctx, o.cfg.Bucket, obj, r, size, minio.PutObjectOptions{
			PartSize:    part,
			Progress:    progress,
			ContentType: "application/octet-stream",
		})
		if err == nil {
			return info.Size, nil
		}
		if !rewind() {
			return 0, o.fail("put", key, err)
		}
		if err := retry.wait(ctx, "put", key, err); err != nil {
			return 0, o.fail("put", key, err)
		}
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// progressCounter is the hook minio-go feeds every byte it sends; parts go
// up in parallel, so it serialises the callback. A part that is retried is
// counted again, so done is clamped to total.
type progressCounter struct {
	mu          sync.Mutex
	done, total int64
	fn          func(done, total int64)
}

func (p *progressCounter) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = min(p.done+int64(len(b)), p.total)
	p.fn(p.done, p.total)
	return len(b), nil
}

func (p *progressCounter) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = 0
}

// PresignGet returns a URL that GETs key without credentials until expiry
// (at most 7 days) passes.
func (o *S3Origin) PresignGet(ctx context.Context, key string, expiry time.Duration) (string, error) {
	obj, err := o.object(key)
	if err != nil {
		return "", err
	}
	if expiry < time.Second || expiry > 7*24*time.Hour {
		return "", fmt.Errorf("cachefs: presign %q on %s: expiry %s is out of range: use 1s to 7 days", key, o, expiry)
	}
	var u string
	err = o.retry(ctx, "presign", key, func() error {
		url, err := o.read.PresignedGetObject(ctx, o.cfg.Bucket, obj, expiry, nil)
		if err == nil {
			u = url.String()
		}
		return err
	})
	if err != nil {
		return "", o.fail("presign", key, err)
	}
	return u, nil
}

// EnsureBucket creates the bucket if it does not exist. It is also the
// cheapest check that the endpoint answers and the credentials work.
func (o *S3Origin) EnsureBucket(ctx context.Context) error {
	var exists bool
	err := o.retry(ctx, "check bucket", "", func() (err error) {
		exists, err = o.read.BucketExists(ctx, o.cfg.Bucket)
		return err
	})
	if err != nil {
		return o.fail("check bucket", "", err)
	}
	if exists {
		return nil
	}
	err = o.retry(ctx, "create bucket", "", func() error {
		err := o.read.MakeBucket(ctx, o.cfg.Bucket, minio.MakeBucketOptions{Region: o.cfg.Region})
		if code := minio.ToErrorResponse(err).Code; code == "BucketAlreadyOwnedByYou" {
			return nil // created meanwhile, or by a retried request
		}
		return err
	})
	if err != nil {
		return o.fail("create bucket", "", err)
	}
	o.cfg.Logger.Info("created bucket", "origin", o.String())
	return nil
}

// retrier paces the attempts of one request or stream: a doubling
// backoff, and at most Retries failures in a row.
type retrier struct {
	o        *S3Origin
	failures int
	backoff  time.Duration
}

func (o *S3Origin) newRetrier() retrier { return retrier{o: o, backoff: o.cfg.Backoff} }

// progress records that the stream moved on, so its next failure is
// counted as the first again.
func (r *retrier) progress() {
	r.failures = 0
	r.backoff = r.o.cfg.Backoff
}

// wait returns err, marked as final, if it is not worth retrying;
// otherwise it sleeps the backoff and returns nil.
func (r *retrier) wait(ctx context.Context, what, key string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if !transient(err) {
		return err
	}
	r.failures++
	if r.failures > r.o.cfg.Retries {
		return &retriesError{attempts: r.failures, err: err}
	}
	r.o.cfg.Logger.Warn("s3 request failed; retrying", "origin", r.o.String(), "op", what, "key", key,
		"attempt", r.failures, "backoff", r.backoff, "err", err)
	t := time.NewTimer(r.backoff)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.backoff = min(2*r.backoff, max(maxS3Backoff, r.o.cfg.Backoff))
	return nil
}

// retry runs op until it succeeds or wait gives up.
func (o *S3Origin) retry(ctx context.Context, what, key string, op func() error) error {
	r := o.newRetrier()
	for {
		err := op()
		if err == nil {
			return nil
		}
		if err := r.wait(ctx, what, key, err); err != nil {
			return err
		}
	}
}

// retriesError is a transient error that outlasted the retries.
type retriesError struct {
	attempts int
	err      error
}

func (e *retriesError) Error() string { return e.err.Error() }
func (e *retriesError) Unwrap() error { return e.err }

// transient reports whether a failed request may succeed if sent again.
func transient(err error) bool {
	var resp minio.ErrorResponse
	if errors.As(err, &resp) {
		switch resp.Code {
		case "RequestTimeout", "RequestError", "InternalError", "ServiceUnavailable", "SlowDown",
			"SlowDownRead", "SlowDownWrite", "Throttling", "ThrottlingException", "RequestLimitExceeded",
			"RequestThrottled", "XMinioServerNotInitialized":
			return true
		}
		return resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout ||
			resp.StatusCode == http.StatusTooManyRequests
	}
	// Misconfiguration is not cured by waiting.
	if errors.Is(err, errRangeIgnored) {
		return false
	}
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	// What is left failed on the way: refused, reset, cut short, timed out.
	return true
}

// fail turns an error from op on key into one that says what to fix.
func (o *S3Origin) fail(op, key string, err error) error {
	what := op
	if key != "" {
		what = fmt.Sprintf("%s %q", op, key)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cachefs: %s on %s: %w", what, o, err)
	}
	if re, ok := errors.AsType[*retriesError](err); ok {
		if _, answered := errors.AsType[minio.ErrorResponse](re.err); answered {
			return fmt.Errorf("cachefs: %s on %s: still failing after %d attempts: %w", what, o, re.attempts, re.err)
		}
		return fmt.Errorf("cachefs: %s on %s: no answer after %d attempts: is the server up and the endpoint right? %w",
			what, o, re.attempts, re.err)
	}
	var resp minio.ErrorResponse
	errors.As(err, &resp)
	var fix string
	switch resp.Code {
	case "NoSuchKey":
		return fmt.Errorf("cachefs: %s has no object %q: upload it to the origin first: %w", o, key, ErrNotFound)
	case "NoSuchBucket":
		fix = fmt.Sprintf("bucket %q does not exist: create it, or correct the bucket name", o.cfg.Bucket)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		fix = "the server refused the credentials: check the access key and secret key, and that they may use bucket " + o.cfg.Bucket
	case "AuthorizationHeaderMalformed", "InvalidRegion":
		fix = "the region is wrong: set it to the bucket's region, or leave it empty"
	case "PreconditionFailed":
		fix = "the object changed while it was being read: fetch it again"
	}
	if strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		fix = "the endpoint speaks plain HTTP: turn Secure off"
	}
	if fix != "" {
		return fmt.Errorf("cachefs: %s on %s: %s: %w", what, o, fix, err)
	}
	return fmt.Errorf("cachefs: %s on %s: %w", what, o, err)
}
