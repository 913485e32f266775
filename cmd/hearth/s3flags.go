package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/hearth-gpu/hearth/cachefs"
)

// s3Flags are the object-store flags shared by the agent, the demo and
// `model push`. Credentials come from flags, files or the environment
// (HEARTH_S3_ACCESS_KEY, HEARTH_S3_SECRET_KEY), never only from argv, which
// other users of the host can read.
type s3Flags struct {
	endpoint, bucket, prefix, region string
	accessKey, secretKeyFile         string
	insecure                         bool
	resultsBucket                    string
}

func addS3Flags(fs *flag.FlagSet, withResults bool) *s3Flags {
	f := &s3Flags{}
	fs.StringVar(&f.endpoint, "s3-endpoint", os.Getenv("HEARTH_S3_ENDPOINT"), "S3/MinIO endpoint host:port; setting it makes the object store the origin (default $HEARTH_S3_ENDPOINT)")
	fs.StringVar(&f.bucket, "s3-bucket", cmp.Or(os.Getenv("HEARTH_S3_BUCKET"), "models"), "bucket holding the models (default $HEARTH_S3_BUCKET or models)")
	fs.StringVar(&f.prefix, "s3-prefix", "", "key prefix inside the bucket")
	fs.StringVar(&f.region, "s3-region", "", "bucket region (empty: the store's default)")
	fs.StringVar(&f.accessKey, "s3-access-key", os.Getenv("HEARTH_S3_ACCESS_KEY"), "access key (default $HEARTH_S3_ACCESS_KEY)")
	fs.StringVar(&f.secretKeyFile, "s3-secret-key-file", "", "file holding the secret key (default $HEARTH_S3_SECRET_KEY)")
	fs.BoolVar(&f.insecure, "s3-insecure", false, "talk plain HTTP to the endpoint (local MinIO)")
	if withResults {
		fs.StringVar(&f.resultsBucket, "results-bucket", os.Getenv("HEARTH_RESULTS_BUCKET"), "bucket job outputs are uploaded to, with presigned URLs (default $HEARTH_RESULTS_BUCKET; empty: keep them on the host)")
	}
	return f
}

func (f *s3Flags) set() bool { return f.endpoint != "" }

// config returns the origin's config, or nil when no endpoint is set.
func (f *s3Flags) config() (*cachefs.S3Config, error) {
	if !f.set() {
		if f.resultsBucket != "" {
			return nil, usagef("--results-bucket needs --s3-endpoint and its credentials")
		}
		return nil, nil
	}
	secret := os.Getenv("HEARTH_S3_SECRET_KEY")
	if f.secretKeyFile != "" {
		b, err := os.ReadFile(f.secretKeyFile)
		if err != nil {
			return nil, usagef("--s3-secret-key-file: %v", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if f.accessKey == "" || secret == "" {
		return nil, usagef("the S3 origin at %s needs credentials: --s3-access-key (or $HEARTH_S3_ACCESS_KEY) and --s3-secret-key-file (or $HEARTH_S3_SECRET_KEY)", f.endpoint)
	}
	return &cachefs.S3Config{
		Endpoint: f.endpoint, Bucket: f.bucket, Prefix: f.prefix, Region: f.region,
		AccessKey: f.accessKey, SecretKey: secret, Secure: !f.insecure,
	}, nil
}

// results returns the results bucket's config, or nil when none is set.
func (f *s3Flags) results(origin *cachefs.S3Config) *cachefs.S3Config {
	if f.resultsBucket == "" || origin == nil {
		return nil
	}
	r := *origin
	r.Bucket, r.Prefix = f.resultsBucket, ""
	return &r
}

// describe names the origin for messages.
func (f *s3Flags) describe() string {
	return fmt.Sprintf("s3://%s/%s at %s", f.bucket, f.prefix, f.endpoint)
}
