package refworker

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// session runs Main over in-memory pipes, as the agent would over a
// process's stdin and stdout.
type session struct {
	t      *testing.T
	in     *io.PipeWriter
	msgs   chan map[string]any
	exit   chan int
	stderr *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func start(t *testing.T, args ...string) *session {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &session{t: t, in: inW, msgs: make(chan map[string]any, 100), exit: make(chan int, 1), stderr: &syncBuffer{}}
	go func() {
		code := Main(inR, outW, s.stderr, args)
		outW.Close()
		s.exit <- code
	}()
	go func() {
		sc := bufio.NewScanner(outR)
		sc.Buffer(nil, maxLine)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"unparsable": sc.Text()}
			}
			s.msgs <- m
		}
		close(s.msgs)
	}()
	t.Cleanup(func() { inW.Close() })
	return s
}

func (s *session) send(line string) {
	s.t.Helper()
	if _, err := io.WriteString(s.in, line+"\n"); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

func (s *session) recv() map[string]any {
	s.t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			s.t.Fatal("worker closed its output")
		}
		return m
	case <-time.After(10 * time.Second):
		s.t.Fatalf("no message from the worker; stderr:\n%s", s.stderr.b.String())
	}
	return nil
}

// final skips progress events and returns the next final response.
func (s *session) final() (map[string]any, []map[string]any) {
	s.t.Helper()
	var progress []map[string]any
	for {
		m := s.recv()
		if m["event"] == "progress" {
			progress = append(progress, m)
			continue
		}
		return m, progress
	}
}

func writeFile(t *testing.T, dir, name, content string) (path string, digest proto.Digest) {
	t.Helper()
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	return path, proto.DigestFromSum(sum[:])
}

func loadLine(id int, path string, d proto.Digest, size int) string {
	return fmt.Sprintf(`{"id":%d,"op":"load","models":[{"name":"m","digest":%q,"path":%q,"size":%d}]}`, id, d, path, size)
}

func TestProtocolSession(t *testing.T) {
	dir := t.TempDir()
	path, d := writeFile(t, dir, "model.bin", "weights of a very small model")
	s := start(t)

	hello := s.recv()
	if hello["event"] != "hello" || hello["protocol"] != float64(1) || hello["name"] != "refworker" || hello["pid"] == nil {
		t.Fatalf("hello = %v", hello)
	}

	out := t.TempDir()
	s.send(fmt.Sprintf(`{"id":1,"op":"run","job_id":"j","kind":"worker","input":{},"models":[%q],"output_dir":%q}`, d, out))
	if m, _ := s.final(); m["ok"] != false || !strings.Contains(fmt.Sprint(m["error"]), "not loaded") {
		t.Fatalf("run before load = %v, want a not-loaded error", m)
	}

	s.send(loadLine(2, path, d, 29))
	m := s.recv()
	if m["id"] != float64(2) || m["ok"] != true || fmt.Sprint(m["loaded"]) != fmt.Sprintf("[%s]", d) {
		t.Fatalf("load = %v", m)
	}
	// A second load of the same digest must not read the file again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	s.send(loadLine(3, path, d, 29))
	if m := s.recv(); m["ok"] != true {
		t.Fatalf("reload of a held model = %v", m)
	}

	input := `{"1":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"m"}}}`
	s.send(fmt.Sprintf(`{"id":4,"op":"run","job_id":"j","kind":"workflow","input":%s,"models":[%q],"output_dir":%q}`, input, d, out))
	m, progress := s.final()
	if m["id"] != float64(4) || m["ok"] != true || fmt.Sprint(m["outputs"]) != "["+OutputName+"]" {
		t.Fatalf("run = %v", m)
	}
	if len(progress) != 4 || progress[3]["value"] != float64(4) || progress[3]["max"] != float64(4) || progress[0]["id"] != float64(4) {
		t.Fatalf("progress = %v, want 4 steps for id 4", progress)
	}
	got, err := os.ReadFile(filepath.Join(out, OutputName))
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := png.Encode(&want, Image(Fingerprint([]byte(input), []proto.Digest{d}))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the output is not the image of the input's fingerprint")
	}

	s.send(fmt.Sprintf(`{"id":5,"op":"unload","digests":[%q,"sha256:%s"]}`, d, strings.Repeat("0", 64)))
	if m := s.recv(); m["id"] != float64(5) || m["ok"] != true {
		t.Fatalf("unload = %v", m)
	}
	s.send(fmt.Sprintf(`{"id":6,"op":"run","kind":"worker","models":[%q],"output_dir":%q}`, d, out))
	if m, _ := s.final(); m["ok"] != false {
		t.Fatalf("run after unload = %v, want a refusal", m)
	}

	s.send(`{"id":7,"op":"train"}`)
	if m := s.recv(); m["id"] != float64(7) || m["ok"] != false || !strings.Contains(fmt.Sprint(m["error"]), "unknown op") {
		t.Fatalf("unknown op = %v", m)
	}
	s.send(`this is not json`) // ignored, logged
	s.in.Close()
	if code := <-s.exit; code != 0 {
		t.Fatalf("exit code %d after end of input", code)
	}
}

func TestLoadRefusesWrongDigest(t *testing.T) {
	dir := t.TempDir()
	goodPath, good := writeFile(t, dir, "good.bin", "good")
	badPath, _ := writeFile(t, dir, "bad.bin", "tampered")
	_, other := writeFile(t, dir, "other.bin", "other")
	s := start(t)
	s.recv() // hello

	s.send(fmt.Sprintf(`{"id":1,"op":"load","models":[{"name":"g","digest":%q,"path":%q,"size":4},{"name":"b","digest":%q,"path":%q,"size":8}]}`,
		good, goodPath, other, badPath))
	m := s.recv()
	if m["ok"] != false || !strings.Contains(fmt.Sprint(m["error"]), "has digest") {
		t.Fatalf("load of a tampered file = %v", m)
	}
	if fmt.Sprint(m["loaded"]) != fmt.Sprintf("[%s]", good) {
		t.Fatalf("loaded = %v, want only the good model", m["loaded"])
	}
	s.send(fmt.Sprintf(`{"id":2,"op":"run","models":[%q],"output_dir":%q}`, other, t.TempDir()))
	if m, _ := s.final(); m["ok"] != false {
		t.Fatalf("a model that failed verification was usable: %v", m)
	}
	s.send(loadLine(3, goodPath, good, 5)) // wrong size
	if m := s.recv(); m["ok"] != true {
		t.Fatalf("a held model is not re-read, so its size is not re-checked: %v", m)
	}
}

func TestCancelRun(t *testing.T) {
	s := start(t, "--step-delay=10s")
	s.recv() // hello
	s.send(fmt.Sprintf(`{"id":1,"op":"run","kind":"worker","input":{},"models":[],"output_dir":%q}`, t.TempDir()))
	s.send(`{"id":2,"op":"cancel","target":1}`)
	got := map[float64]map[string]any{}
	for len(got) < 2 {
		m := s.recv()
		got[m["id"].(float64)] = m
	}
	if got[2]["ok"] != true {
		t.Fatalf("cancel answer = %v", got[2])
	}
	if got[1]["ok"] != false || got[1]["error"] != "cancelled" {
		t.Fatalf("cancelled run answer = %v", got[1])
	}
	// Cancelling something finished or unknown is fine too.
	s.send(`{"id":3,"op":"cancel","target":99}`)
	if m := s.recv(); m["ok"] != true {
		t.Fatalf("cancel of an unknown id = %v", m)
	}
}

func TestEndOfInputCancelsRuns(t *testing.T) {
	s := start(t, "--step-delay=10s")
	s.recv() // hello
	s.send(fmt.Sprintf(`{"id":1,"op":"run","kind":"worker","output_dir":%q}`, t.TempDir()))
	s.in.Close()
	if m := s.recv(); m["id"] != float64(1) || m["error"] != "cancelled" {
		t.Fatalf("run at end of input = %v", m)
	}
	select {
	case code := <-s.exit:
		if code != 0 {
			t.Fatalf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Main did not return after end of input")
	}
}

func TestBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	if code := Main(strings.NewReader(""), io.Discard, &stderr, []string{"--steps=0"}); code != 2 {
		t.Fatalf("--steps=0: exit %d, want 2", code)
	}
	if code := Main(strings.NewReader(""), io.Discard, &stderr, []string{"--no-such-flag"}); code != 2 {
		t.Fatalf("unknown flag: exit %d, want 2", code)
	}
}

func TestReadLineSkipsOverlongLines(t *testing.T) {
	long := strings.Repeat("x", maxLine+10)
	r := bufio.NewReaderSize(strings.NewReader("a\n"+long+"\nb"), 64<<10)
	var got []string
	for {
		line, err := readLine(r)
		if err == errLineTooLong {
			got = append(got, "<too long>")
			continue
		}
		if len(line) > 0 {
			got = append(got, string(line))
		}
		if err != nil {
			break
		}
	}
	if fmt.Sprint(got) != "[a <too long> b]" {
		t.Fatalf("lines = %v", got)
	}
}
