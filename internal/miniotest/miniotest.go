// Package miniotest starts a real MinIO server for tests: one process per
// test on a free port of 127.0.0.1, with its own data directory and random
// root credentials, killed when the test ends.
package miniotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

const (
	// EnvBinary names the minio binary to run, overriding the search.
	EnvBinary = "HEARTH_MINIO"
	// EnvRequire, set to 1, turns a missing binary from a skip into a
	// failure, so that CI cannot pass by skipping every S3 test.
	EnvRequire = "HEARTH_REQUIRE_MINIO"

	missing = "the minio binary was not found (set " + EnvBinary + ", or put it in GOBIN, GOPATH/bin or PATH); `make test` installs it"

	readyTimeout = time.Minute
	startTries   = 3
)

// Server is a running MinIO. Its fields are what a client needs to reach it.
type Server struct {
	// Endpoint is host:port, plain HTTP.
	Endpoint  string
	AccessKey string
	SecretKey string
	// Dir is the server's data directory.
	Dir string
}

// Start runs a MinIO server until t ends. Without a minio binary it skips
// t, or fails it if HEARTH_REQUIRE_MINIO=1.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("miniotest: %s (%s=1 makes this a failure): %v", missing, EnvRequire, err)
		}
		t.Skipf("miniotest: %s: %v", missing, err)
	}
	s := &Server{
		AccessKey: "hearth-" + randomHex(t, 8),
		SecretKey: randomHex(t, 20),
		Dir:       t.TempDir(),
	}
	// A free port can be taken between probing it and MinIO binding it,
	// so a server that exits during startup is tried again on new ports.
	var errs []error
	for range startTries {
		err := s.start(t, bin)
		if err == nil {
			return s
		}
		errs = append(errs, err)
	}
	t.Fatalf("miniotest: start %s: %v", bin, errors.Join(errs...))
	return nil
}

// Binary returns the path of the minio binary Start would run.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvBinary, p, err)
		}
		return p, nil
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	for _, gopath := range filepath.SplitList(build.Default.GOPATH) {
		dirs = append(dirs, filepath.Join(gopath, "bin"))
	}
	for _, dir := range dirs {
		p := filepath.Join(dir, "minio")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return exec.LookPath("minio")
}

func (s *Server) start(t testing.TB, bin string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	console := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))

	cmd := exec.Command(bin, "server", "--quiet",
		"--address", s.Endpoint, "--console-address", console,
		// Keeps MinIO from creating its certs directory in $HOME.
		"--certs-dir", filepath.Join(s.Dir, ".certs"),
		filepath.Join(s.Dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
	)
	out := &tailBuffer{max: 64 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() {
		killTree(cmd)
		<-exited
	}

	if err := waitReady(s.Endpoint, exited); err != nil {
		stop()
		return fmt.Errorf("%w (exit: %v); its output:\n%s", err, waitErr, out.String())
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("miniotest: output of the MinIO at %s:\n%s", s.Endpoint, out.String())
		}
	})
	return nil
}

// waitReady polls MinIO's readiness probe until it answers 200, the
// process exits, or readyTimeout passes.
func waitReady(endpoint string, exited <-chan struct{}) error {
	url := "http://" + endpoint + "/minio/health/ready"
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("minio exited before %s was ready", endpoint)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("minio at %s not ready after %s", endpoint, readyTimeout)
}

// Client returns a minio-go client logged in as the root user.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
	})
	if err != nil {
		t.Fatalf("miniotest: client for %s: %v", s.Endpoint, err)
	}
	return c
}

// MakeBucket creates bucket, failing t if it cannot.
func (s *Server) MakeBucket(t testing.TB, bucket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("miniotest: make bucket %q on %s: %v", bucket, s.Endpoint, err)
	}
}

// freePorts returns n distinct ports on 127.0.0.1 that were free a moment
// ago; all are held open together so the kernel hands out different ones.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// tailBuffer keeps the last max bytes written to it; MinIO writes to it
// from the process's output copiers while a test may read it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (w *tailBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if over := len(w.b) - w.max; over > 0 {
		w.b = append(w.b[:0], w.b[over:]...)
	}
	return len(p), nil
}

func (w *tailBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.b)
}
