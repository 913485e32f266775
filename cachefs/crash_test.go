package cachefs

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// crashChildEnv makes the test binary a child that writes into a cache
// until it is killed; its value is the cache directory.
const crashChildEnv = "HEARTH_CACHEFS_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		os.Exit(crashChild(dir))
	}
	os.Exit(m.Run())
}

// crashChild puts one blob whole, says so on stdout, then puts a second one
// from a source that never ends, and waits to be killed mid-write.
func crashChild(dir string) int {
	s, err := Open(Config{Dir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	whole, d := testBlob(3<<20, 21)
	if _, _, err := s.Put(context.Background(), d, bytes.NewReader(whole)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("whole", d)
	_, partial := testBlob(1<<20, 22)
	_, _, err = s.Put(context.Background(), partial, &endless{})
	fmt.Fprintln(os.Stderr, "the endless put returned:", err)
	return 1
}

// endless yields pseudo-random bytes forever, a little at a time, so the
// kill lands in the middle of a write.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	e.n++
	if e.n > 8 {
		time.Sleep(time.Millisecond)
	}
	n := min(len(p), 64<<10)
	for i := range p[:n] {
		p[i] = byte(e.n + i)
	}
	return n, nil
}

// TestKillDuringWrite kills a process with SIGKILL while it streams a blob
// into the cache: on reopening, the partial file is gone, the blob written
// before is there and verifies, and the index and the disk agree.
func TestKillDuringWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make([]byte, 128)
	n, err := out.Read(line)
	if err != nil {
		t.Fatalf("child said nothing: %v (stderr %s)", err, stderr.String())
	}
	fields := strings.Fields(string(line[:n]))
	if len(fields) != 2 || fields[0] != "whole" {
		t.Fatalf("child said %q", line[:n])
	}
	whole := proto.Digest(fields[1])

	// Kill once the second blob's temp file has grown past a few megabytes.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if partialBytes(t, filepath.Join(dir, "tmp")) > 2<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never wrote a partial blob (stderr %s)", stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	s := openTestStore(t, dir, 0, nil)
	assertNoTemp(t, s)
	list := s.List()
	if len(list) != 1 || list[0].Digest != whole {
		t.Fatalf("after the crash the index holds %+v; want only the blob put before it", list)
	}
	if err := s.Verify(context.Background(), whole); err != nil {
		t.Fatalf("the blob written before the crash does not verify: %v", err)
	}
	// Index and disk agree: every blob file is indexed, and nothing else is there.
	var files int
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			files++
		}
		return err
	})
	if used, _ := s.Usage(); files != 1 || used != list[0].Size {
		t.Fatalf("disk holds %d blob files and the index %d bytes; want 1 file of %d bytes", files, used, list[0].Size)
	}
}

// partialBytes is the size of the largest file in dir.
func partialBytes(t *testing.T, dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var most int64
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Size() > most {
			most = info.Size()
		}
	}
	return most
}
