package cachefs

import (
	"context"
	"errors"
	"io"
)

// Origin is where blobs come from when no host in the pool has them: an
// object store in production, a local directory in development.
type Origin interface {
	// Open returns the object at key (a clean relative slash path, checked
	// with proto.ValidateModelName) and its size, or -1 if unknown. A
	// missing key yields an error wrapping ErrNotFound.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// Put stores r under key atomically: readers never see a partial
	// object. It returns the number of bytes stored.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// String names the origin for logs and errors.
	String() string
}

// ErrNotFound is wrapped by Origin.Open for a key that holds no object.
var ErrNotFound = errors.New("cachefs: object not found")
