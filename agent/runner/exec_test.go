package runner

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

func shExec(script string, env map[string]string) *proto.ExecPayload {
	return &proto.ExecPayload{Command: []string{"/bin/sh", "-c", script}, Env: env}
}

func TestExecRunsCommand(t *testing.T) {
	models := t.TempDir()
	m := writeModel(t, models, "checkpoints/a.safetensors", 100)
	out := t.TempDir()
	e := NewExec(ExecConfig{Logger: testLogger(t)})
	defer e.Close()

	script := `echo '{"progress":{"value":3,"max":10,"node":"x"}}'
echo "just a log line"
echo "$HEARTH_JOB_ID $GREETING" > "$HEARTH_OUTPUT_DIR/id.txt"
printf %s "$HEARTH_MODELS" > models.json
mkdir sub && echo deep > sub/y.txt`
	var mu sync.Mutex
	var seen []proto.Progress
	res, err := e.Run(context.Background(), Request{
		JobID:     "job-1",
		Kind:      "exec",
		Exec:      shExec(script, map[string]string{"GREETING": "hi", EnvOutputDir: "/elsewhere"}),
		Models:    []Model{m},
		OutputDir: out,
	}, func(p proto.Progress) {
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if want := []string{"id.txt", "models.json", "sub/y.txt"}; !slices.Equal(res.Outputs, want) {
		t.Fatalf("outputs = %q, want %q", res.Outputs, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []proto.Progress{{Value: 3, Max: 10, Node: "x"}}; !slices.Equal(seen, want) {
		t.Fatalf("progress = %+v, want %+v", seen, want)
	}
	id, _ := os.ReadFile(filepath.Join(out, "id.txt"))
	if got := strings.TrimSpace(string(id)); got != "job-1 hi" {
		t.Fatalf("id.txt = %q: job id or job env missing, or HEARTH_OUTPUT_DIR overridden", got)
	}
	var wm []wireModel
	raw, _ := os.ReadFile(filepath.Join(out, "models.json"))
	if err := json.Unmarshal(raw, &wm); err != nil {
		t.Fatalf("HEARTH_MODELS %q: %v", raw, err)
	}
	if want := wireModels([]Model{m}); !slices.Equal(wm, want) {
		t.Fatalf("HEARTH_MODELS = %+v, want %+v", wm, want)
	}
}

func TestExecNonZeroExitQuotesStderrTail(t *testing.T) {
	e := NewExec(ExecConfig{Logger: testLogger(t)})
	defer e.Close()
	// 10 KiB of noise first: only the last 4 KiB may reach the error.
	script := `i=0; while [ $i -lt 160 ]; do echo "noise line $i ................................................" >&2; i=$((i+1)); done
echo "boom: the prompt has no sampler" >&2
exit 3`
	_, err := e.Run(context.Background(), Request{JobID: "job-2", Kind: "exec", Exec: shExec(script, nil), OutputDir: t.TempDir()}, nil)
	if err == nil {
		t.Fatal("Run succeeded, want an error")
	}
	if !errors.Is(err, ErrJobFailed) {
		t.Fatalf("error %v is not ErrJobFailed", err)
	}
	msg := err.Error()
	for _, want := range []string{"runner: job job-2", "exit status 3", "boom: the prompt has no sampler"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("error %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, "noise line 0 ") || len(msg) > execStderrTail+200 {
		t.Fatalf("error quotes more than the stderr tail (%d bytes)", len(msg))
	}
}

func TestExecCancelKillsProcessGroup(t *testing.T) {
	e := NewExec(ExecConfig{Logger: testLogger(t)})
	defer e.Close()
	out := t.TempDir()
	// The shell starts a child and waits: cancelling must kill both.
	script := `sleep 60 & echo $! > child.pid
echo '{"progress":{"value":1,"max":2}}'
wait`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	go func() {
		_, err := e.Run(ctx, Request{JobID: "job-3", Kind: "exec", Exec: shExec(script, nil), OutputDir: out},
			func(proto.Progress) { once.Do(func() { close(started) }) })
		errc <- err
	}()
	select {
	case <-started:
	case err := <-errc:
		t.Fatalf("Run ended before its progress line: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no progress from the command")
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run error = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	raw, err := os.ReadFile(filepath.Join(out, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command's child to be killed", func() bool { return processGone(pid) })
}

func TestExecCloseKillsRunningJobs(t *testing.T) {
	e := NewExec(ExecConfig{Logger: testLogger(t)})
	errc := make(chan error, 1)
	go func() {
		_, err := e.Run(context.Background(), Request{JobID: "job-4", Kind: "exec",
			Exec: shExec(`echo '{"progress":{"value":0,"max":1}}'; exec sleep 60`, nil), OutputDir: t.TempDir()},
			nil)
		errc <- err
	}()
	waitFor(t, "the job to be tracked", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.running) == 1
	})
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Run error = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	_, err := e.Run(context.Background(), Request{JobID: "job-5", Exec: shExec("true", nil), OutputDir: t.TempDir()}, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close = %v, want ErrClosed", err)
	}
}

func TestExecRefusesBadRequests(t *testing.T) {
	e := NewExec(ExecConfig{})
	ctx := context.Background()
	cases := map[string]Request{
		"no command":    {JobID: "j", Exec: &proto.ExecPayload{}, OutputDir: t.TempDir()},
		"no output dir": {JobID: "j", Exec: shExec("true", nil)},
		"bad env name":  {JobID: "j", Exec: shExec("true", map[string]string{"A=B": "c"}), OutputDir: t.TempDir()},
		"missing binary": {JobID: "j", Exec: &proto.ExecPayload{Command: []string{filepath.Join(t.TempDir(), "nope")}},
			OutputDir: t.TempDir()},
	}
	for name, req := range cases {
		if _, err := e.Run(ctx, req, nil); err == nil || !strings.HasPrefix(err.Error(), "runner: ") {
			t.Errorf("%s: error = %v, want a runner error", name, err)
		}
	}
	if got, err := e.Load(ctx, nil); got != nil || err != nil || e.Resident() != nil {
		t.Fatalf("exec Load/Resident should be no-ops")
	}
}

func TestParseProgressLine(t *testing.T) {
	cases := map[string]bool{
		`{"progress":{"value":1,"max":2,"node":"n"}}`: true,
		`  {"progress":{"value":1}}  `:                true,
		`{"progress":null}`:                           false,
		`progress 1/2`:                                false,
		`{"other":1}`:                                 false,
		`{"progress":`:                                false,
	}
	for line, want := range cases {
		if _, ok := parseProgressLine([]byte(line)); ok != want {
			t.Errorf("parseProgressLine(%q) = %v, want %v", line, ok, want)
		}
	}
}
