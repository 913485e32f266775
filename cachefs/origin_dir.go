package cachefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"

	"github.com/hearth-gpu/hearth/proto"
)

// DirOrigin is an Origin backed by a directory tree: key "sdxl/base.safetensors"
// is the file <root>/sdxl/base.safetensors. It serves development, the
// embedded demo, and any shared file system mounted on every host.
//
// Every access goes through os.Root, so neither a key nor a symbolic link
// inside the tree can reach a file outside it. Put writes a hidden temp file
// ".<name>.<random>.partial" beside the object and renames it into place; a
// crash mid-Put can leave such a file behind, never a partial object.
type DirOrigin struct {
	root string
}

// NewDirOrigin returns an origin serving the tree under root, creating root
// if it is missing.
func NewDirOrigin(root string) (*DirOrigin, error) {
	if root == "" {
		return nil, errors.New("cachefs: dir origin needs a directory: set its path")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("cachefs: dir origin %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("cachefs: create dir origin %s: check the path and its permissions: %w", abs, err)
	}
	return &DirOrigin{root: abs}, nil
}

// String names the origin as "dir:<root>".
func (o *DirOrigin) String() string { return "dir:" + o.root }

// Root returns the absolute directory the origin serves.
func (o *DirOrigin) Root() string { return o.root }

func (o *DirOrigin) checkKey(key string) error {
	if err := proto.ValidateModelName(key); err != nil {
		return fmt.Errorf("cachefs: %s: key %w", o, err)
	}
	return nil
}

// openRoot opens the tree afresh on each call, so a root directory that was
// replaced (a remount, a re-created demo dir) is seen as it is now.
func (o *DirOrigin) openRoot() (*os.Root, error) {
	r, err := os.OpenRoot(o.root)
	if err != nil {
		return nil, fmt.Errorf("cachefs: open %s: is the directory still there? %w", o, err)
	}
	return r, nil
}

// Open opens the file at key. The returned reader stops with ctx's error
// once ctx is done.
func (o *DirOrigin) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := o.checkKey(key); err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("cachefs: open %q on %s: %w", key, o, err)
	}
	root, err := o.openRoot()
	if err != nil {
		return nil, 0, err
	}
	defer root.Close() // files opened through it stay valid
	f, err := root.Open(filepath.FromSlash(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("cachefs: %s has no object %q: upload it to the origin first: %w", o, key, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cachefs: open %q on %s: %w", key, o, err)
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("cachefs: stat %q on %s: %w", key, o, err)
	}
	if !info.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("cachefs: %s key %q is a %s, not an object: %w", o, key, kindOf(info.Mode()), ErrNotFound)
	}
	return &ctxFile{ctx: ctx, f: f}, info.Size(), nil
}

// Put writes r to a temp file beside key, fsyncs it, renames it over key and
// fsyncs the directory, so a reader sees the old object or the whole new one.
func (o *DirOrigin) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := o.checkKey(key); err != nil {
		return 0, err
	}
	root, err := o.openRoot()
	if err != nil {
		return 0, err
	}
	defer root.Close()

	dir := path.Dir(key)
	if err := root.MkdirAll(filepath.FromSlash(dir), 0o755); err != nil {
		return 0, fmt.Errorf("cachefs: create directory %q on %s: %w", dir, o, err)
	}
	tmp := path.Join(dir, fmt.Sprintf(".%s.%016x.partial", path.Base(key), rand.Uint64()))
	f, err := root.OpenFile(filepath.FromSlash(tmp), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return 0, fmt.Errorf("cachefs: create temp file for %q on %s: %w", key, o, err)
	}
	done := false
	defer func() {
		if !done {
			f.Close()
			root.Remove(filepath.FromSlash(tmp))
		}
	}()

	n, err := io.CopyBuffer(f, &cancelReader{ctx: ctx, r: r}, make([]byte, copyBufSize))
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		if isNoSpace(err) {
			return 0, fmt.Errorf("cachefs: %s is full after %d bytes of %q; the partial file was removed: free space there and retry: %w", o, n, key, err)
		}
		return 0, fmt.Errorf("cachefs: write %q to %s: %w", key, o, err)
	}
	if err := root.Rename(filepath.FromSlash(tmp), filepath.FromSlash(key)); err != nil {
		return 0, fmt.Errorf("cachefs: rename %q into place on %s: %w", key, o, err)
	}
	done = true
	if d, err := root.Open(filepath.FromSlash(dir)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return n, fmt.Errorf("cachefs: sync directory of %q on %s: the object may not survive a crash: %w", key, o, err)
		}
	}
	return n, nil
}

// ctxFile is an origin file whose reads end once its context is done, so a
// cancelled job stops reading a 24 GB file promptly.
type ctxFile struct {
	ctx context.Context
	f   *os.File
	r   io.Reader // a section of f, or nil for all of it
}

func (f *ctxFile) Read(p []byte) (int, error) {
	if err := f.ctx.Err(); err != nil {
		return 0, err
	}
	if f.r != nil {
		return f.r.Read(p)
	}
	return f.f.Read(p)
}

func (f *ctxFile) Close() error { return f.f.Close() }

func kindOf(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	default:
		return "special file"
	}
}

// OpenRange returns bytes [off, off+n) of the object at key.
func (o *DirOrigin) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, size, err := o.Open(ctx, key)
	if err != nil {
		return nil, err
	}
	if off < 0 || n < 0 || off+n > size {
		rc.Close()
		return nil, fmt.Errorf("cachefs: %s key %q: range %d+%d is outside its %d bytes; the catalog's size is wrong", o, key, off, n, size)
	}
	cf := rc.(*ctxFile)
	return struct {
		io.Reader
		io.Closer
	}{&ctxFile{ctx: ctx, f: cf.f, r: io.NewSectionReader(cf.f, off, n)}, cf}, nil
}
