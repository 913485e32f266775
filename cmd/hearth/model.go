package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/proto"
)

// runModel runs "model ls" and "model push FILE --name NAME".
func runModel(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "push" {
		return runModelPush(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "ls" {
		return usagef("model needs a subcommand: ls, or push FILE --name NAME")
	}
	return runModelLs(args, stdout, stderr)
}

// runModelPush uploads a model file to the origin, then registers it in the
// catalog under its digest, in that order: a catalog entry never names
// bytes the origin does not hold. The object's default key is its digest
// (blobs/sha256/<hex>), so a new version of a name never overwrites the
// bytes that hosts may still be fetching for the old one.
func runModelPush(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("model push", stderr)
	addr := fs.String("addr", defaultAddr(), "coordinator API URL (several, comma-separated, to fail over)")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token with the admin scope (default $HEARTH_TOKEN)")
	name := fs.String("name", "", "catalog name, with its ComfyUI folder: checkpoints/sd_xl_base_1.0.safetensors (required)")
	key := fs.String("key", "", "object key at the origin (default blobs/sha256/<digest>)")
	originDir := fs.String("origin-dir", "", "push into this local origin directory instead of an object store")
	quiet := fs.Bool("quiet", false, "no progress bar")
	s3 := addS3Flags(fs, false)
	var pos []string
	for rest := args; len(rest) > 0; {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if rest = fs.Args(); len(rest) > 0 {
			pos, rest = append(pos, rest[0]), rest[1:]
		}
	}
	if len(pos) != 1 {
		return usagef("model push needs exactly one FILE, then --name NAME")
	}
	if err := proto.ValidateModelName(*name); err != nil {
		return usagef("--name: the catalog name %v", err)
	}
	if *key != "" {
		if err := proto.ValidateModelName(*key); err != nil {
			return usagef("--key: the origin key %v", err)
		}
	}
	s3cfg, err := s3.config()
	if err != nil {
		return err
	}
	if (s3cfg == nil) == (*originDir == "") {
		return usagef("model push needs an origin: --s3-endpoint (with its bucket and credentials) or --origin-dir")
	}
	path := pos[0]
	fi, err := os.Stat(path)
	if err != nil {
		return usagef("cannot read %s: %v", path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() == 0 {
		return usagef("%s is not a non-empty regular file", path)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	api := newClient(*addr, *token)

	var bar *progressBar
	if !*quiet {
		bar = newProgressBar(stderr, fi.Size())
	}
	bar.phase("hashing")
	size, digest, chunkSize, chunks, err := hashFileProgress(path, bar)
	if err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	objKey := *key
	if objKey == "" {
		objKey = "blobs/sha256/" + digest.Hex()
	}

	var origin interface {
		PutFile(ctx context.Context, key, path string, progress func(done, total int64)) (int64, error)
		String() string
	}
	if s3cfg != nil {
		o, err := cachefs.NewS3Origin(*s3cfg)
		if err != nil {
			return fmt.Errorf("S3 origin: %w", err)
		}
		if err := o.EnsureBucket(ctx); err != nil {
			return err
		}
		origin = o
	} else {
		o, err := cachefs.NewDirOrigin(*originDir)
		if err != nil {
			return err
		}
		origin = dirPutter{o}
	}
	bar.phase("uploading")
	start := time.Now()
	if _, err := origin.PutFile(ctx, objKey, path, bar.set); err != nil {
		bar.done()
		return fmt.Errorf("upload %s to %s: %w", path, origin, err)
	}
	took := time.Since(start)
	bar.done()
	m, err := api.PutModel(ctx, proto.Model{Name: *name, Digest: digest, Size: size, Origin: objKey, ChunkSize: chunkSize, Chunks: chunks})
	if err != nil {
		return fmt.Errorf("uploaded to %s key %s, but registering %s in the catalog failed (push again to retry): %w", origin, objKey, *name, err)
	}
	fmt.Fprintf(stdout, "pushed %s  %s  %s  to %s key %s in %.1fs (%.0f MB/s)\n",
		m.Name, humanBytes(m.Size), m.Digest, origin, objKey, took.Seconds(), float64(size)/1e6/max(took.Seconds(), 1e-9))
	return nil
}

// dirPutter gives a local origin the PutFile that the S3 origin has.
type dirPutter struct{ *cachefs.DirOrigin }

func (d dirPutter) PutFile(ctx context.Context, key, path string, progress func(done, total int64)) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return d.Put(ctx, key, &countingReader{r: f, total: fi.Size(), progress: progress})
}

type countingReader struct {
	r        io.Reader
	n, total int64
	progress func(done, total int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.progress != nil {
		c.progress(c.n, c.total)
	}
	return n, err
}

// hashFileProgress hashes a model file whole and in the chunks hosts
// exchange it in, in one pass.
func hashFileProgress(path string, bar *progressBar) (size int64, d proto.Digest, chunkSize int64, chunks []proto.Digest, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", 0, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, "", 0, nil, err
	}
	chunkSize = proto.ChunkSizeFor(fi.Size())
	size, d, chunks, err = proto.HashChunked(&countingReader{r: f, total: fi.Size(), progress: bar.set}, chunkSize)
	return size, d, chunkSize, chunks, err
}

// progressBar draws one line on a terminal, redrawn at most five times a
// second; elsewhere (a log file, CI) it prints a line per quarter. A nil bar
// draws nothing.
type progressBar struct {
	mu       sync.Mutex
	w        io.Writer
	tty      bool
	total    int64
	label    string
	start    time.Time
	last     time.Time
	quarter  int64
	finished bool
}

func newProgressBar(w io.Writer, total int64) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressBar{w: w, tty: tty, total: total}
}

func (b *progressBar) phase(label string) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.label != "" && b.tty {
		fmt.Fprintln(b.w)
	}
	b.label, b.start, b.last, b.quarter = label, time.Now(), time.Time{}, 0
}

func (b *progressBar) set(done, total int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if total <= 0 {
		total = b.total
	}
	now := time.Now()
	secs := max(now.Sub(b.start).Seconds(), 1e-9)
	pct := float64(done) / float64(max(total, 1))
	if b.tty {
		if now.Sub(b.last) < 200*time.Millisecond && done < total {
			return
		}
		b.last = now
		const width = 30
		fill := int(pct * width)
		fmt.Fprintf(b.w, "\r%-9s [%s%s] %3.0f%%  %s / %s  %.0f MB/s ", b.label, strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
			pct*100, humanBytes(done), humanBytes(total), float64(done)/1e6/secs)
		return
	}
	if q := int64(pct * 4); q > b.quarter || done == total && b.quarter < 4 {
		b.quarter = max(q, b.quarter+1)
		fmt.Fprintf(b.w, "%s: %3.0f%%  %s / %s  %.0f MB/s\n", b.label, pct*100, humanBytes(done), humanBytes(total), float64(done)/1e6/secs)
	}
}

func (b *progressBar) done() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tty && !b.finished {
		fmt.Fprintln(b.w)
	}
	b.finished = true
}
