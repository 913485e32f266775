package agent

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/proto"
)

// resultStore keeps a job's output files where its submitter can fetch them.
type resultStore interface {
	// store takes the file at src (the job's scratch copy, which it may
	// move) and returns the URL the output is fetched from.
	store(ctx context.Context, jobID, name, src string) (string, error)
	String() string
}

// localResults moves outputs under a directory on this host: the dev
// default, with file:// URLs that only mean something on this host.
type localResults struct{ dir string }

func (l localResults) store(_ context.Context, jobID, name, src string) (string, error) {
	to := filepath.Join(l.dir, jobID, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(to), 0o750); err != nil {
		return "", err
	}
	if err := os.Rename(src, to); err != nil {
		return "", err
	}
	u := url.URL{Scheme: "file", Path: to}
	return u.String(), nil
}

func (l localResults) String() string { return "directory " + l.dir }

// bucketResults uploads outputs to an S3 bucket under <job id>/<name> and
// hands out presigned GET URLs, so a client with no S3 credentials can
// download them until the URL expires.
type bucketResults struct {
	bucket *cachefs.S3Origin
	expiry time.Duration
}

func (b bucketResults) store(ctx context.Context, jobID, name, src string) (string, error) {
	key := path.Join(jobID, name)
	if _, err := b.bucket.PutFile(ctx, key, src, nil); err != nil {
		return "", fmt.Errorf("upload to %s: %w", b.bucket, err)
	}
	u, err := b.bucket.PresignGet(ctx, key, b.expiry)
	if err != nil {
		return "", fmt.Errorf("presign %s in %s: %w", key, b.bucket, err)
	}
	return u, nil
}

func (b bucketResults) String() string { return b.bucket.String() }

// storeOutputs hands each of the job's outputs to the result store and
// describes it with its digest, hashed before it leaves the host.
func (a *Agent) storeOutputs(ctx context.Context, jobID, outDir string, names []string) ([]proto.Output, error) {
	var out []proto.Output
	for _, name := range names {
		if err := proto.ValidateModelName(name); err != nil {
			return nil, fmt.Errorf("output name %v", err)
		}
		src := filepath.Join(outDir, filepath.FromSlash(name))
		size, digest, err := hashFile(src)
		if err != nil {
			return nil, err
		}
		u, err := a.results.store(ctx, jobID, name, src)
		if err != nil {
			return nil, err
		}
		out = append(out, proto.Output{Name: name, Size: size, Digest: digest, URL: u})
	}
	return out, nil
}

func hashFile(path string) (int64, proto.Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	return proto.DigestOf(f)
}
