package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Environment variables an exec job receives.
const (
	EnvJobID     = "HEARTH_JOB_ID"
	EnvOutputDir = "HEARTH_OUTPUT_DIR"
	// EnvModels holds a JSON array of {"name","digest","path","size"}.
	EnvModels = "HEARTH_MODELS"
)

const (
	// execStderrTail is how much of a failed command's stderr its error quotes.
	execStderrTail = 4 << 10
	// execWaitDelay bounds how long Run waits for a finished or killed
	// command's pipes to close; a helper that escaped the process group and
	// holds them open must not hang the slot.
	execWaitDelay = 5 * time.Second
)

// ExecConfig configures an Exec runner.
type ExecConfig struct {
	Logger *slog.Logger
	// Env is added to the agent's own environment for every job.
	Env []string
}

// Exec is the runner that starts one process per job: nothing stays warm,
// so every job pays its full load time. It suits tools that cannot be kept
// resident, and batch jobs where that does not matter.
type Exec struct {
	log *slog.Logger
	env []string

	mu      sync.Mutex
	closed  bool
	running map[*context.CancelCauseFunc]struct{}
}

var _ Runner = (*Exec)(nil)

// NewExec returns an Exec runner.
func NewExec(cfg ExecConfig) *Exec {
	return &Exec{
		log:     orDiscard(cfg.Logger),
		env:     slices.Clone(cfg.Env),
		running: make(map[*context.CancelCauseFunc]struct{}),
	}
}

// Load does nothing: an exec job loads its models itself, every time.
func (e *Exec) Load(ctx context.Context, models []Model) ([]proto.Digest, error) {
	return nil, nil
}

// Resident is always empty.
func (e *Exec) Resident() []ResidentModel { return nil }

// Close kills the jobs still running; later calls to Run fail with ErrClosed.
func (e *Exec) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for cancel := range e.running {
		(*cancel)(ErrClosed)
	}
	return nil
}

// Run starts req.Exec.Command (argv, no shell) in req.OutputDir with
// HEARTH_JOB_ID, HEARTH_OUTPUT_DIR and HEARTH_MODELS set, waits for it and
// returns the regular files it left in OutputDir. A stdout line of the form
// {"progress":{"value":3,"max":10,"node":"x"}} is passed to progress (from
// another goroutine, never after Run returns); other lines are logged.
// Cancelling ctx kills the command's whole process group.
func (e *Exec) Run(ctx context.Context, req Request, progress func(proto.Progress)) (Result, error) {
	if req.Exec == nil || len(req.Exec.Command) == 0 {
		return Result{}, fmt.Errorf("runner: job %s: exec runner needs a command (exec.command)", req.JobID)
	}
	if req.OutputDir == "" {
		return Result{}, fmt.Errorf("runner: job %s: no output directory", req.JobID)
	}
	models, err := validateModels(req.Models)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: %w", req.JobID, err)
	}
	env, err := e.jobEnv(req, models)
	if err != nil {
		return Result{}, err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !e.track(&cancel) {
		return Result{}, fmt.Errorf("runner: job %s: %w", req.JobID, ErrClosed)
	}
	defer e.untrack(&cancel)

	argv := req.Exec.Command
	log := e.log.With("job", req.JobID)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// The output directory is the working directory, so a tool that writes
	// relative names needs no flags to put its results where they are kept.
	cmd.Dir = req.OutputDir
	cmd.Env = env
	ownGroup(cmd)
	cmd.Cancel = func() error { return killGroup(cmd.Process) }
	cmd.WaitDelay = execWaitDelay

	tail := &tailBuffer{max: execStderrTail}
	stdout := &lineWriter{max: maxLine, fn: func(line []byte) {
		if p, ok := parseProgressLine(line); ok {
			if progress != nil {
				progress(p)
			}
			return
		}
		log.Debug("runner: exec stdout", "line", string(line))
	}}
	stderr := &lineWriter{max: maxLine, fn: func(line []byte) {
		tail.AddLine(line)
		log.Info("runner: exec stderr", "line", string(line))
	}}
	cmd.Stdout, cmd.Stderr = stdout, stderr

	start := time.Now()
	if err := cmd.Start(); err != nil {
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("runner: job %s cancelled before start: %w", req.JobID, context.Cause(ctx))
		}
		return Result{}, fmt.Errorf("runner: job %s: start %q: %w", req.JobID, argv[0], err)
	}
	log.Info("runner: exec job started", "pid", cmd.Process.Pid, "command", argv[0])
	waitErr := cmd.Wait()
	stdout.Flush()
	stderr.Flush()

	if ctx.Err() != nil {
		return Result{}, fmt.Errorf("runner: job %s cancelled after %s: %w",
			req.JobID, time.Since(start).Round(time.Millisecond), context.Cause(ctx))
	}
	var exitErr *exec.ExitError
	switch {
	case waitErr == nil:
	case errors.Is(waitErr, exec.ErrWaitDelay):
		// The command itself succeeded; a leftover helper kept its output open.
		log.Warn("runner: exec job exited but its output stayed open; a child process may have escaped", "err", waitErr)
	case errors.As(waitErr, &exitErr):
		return Result{}, fmt.Errorf("runner: job %s: %w: %s: %w%s",
			req.JobID, ErrJobFailed, argv[0], exitErr, quoteTail(tail.String()))
	default:
		return Result{}, fmt.Errorf("runner: job %s: wait for %s: %w", req.JobID, argv[0], waitErr)
	}

	outputs, err := listOutputs(req.OutputDir)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: %w", req.JobID, err)
	}
	log.Info("runner: exec job finished", "outputs", len(outputs), "run_s", time.Since(start).Seconds())
	return Result{Outputs: outputs}, nil
}

// jobEnv builds the environment: the agent's, the runner's, the job's, and
// last the HEARTH_* variables, so a job cannot point them elsewhere (os/exec
// keeps the last of duplicate keys).
func (e *Exec) jobEnv(req Request, models []Model) ([]string, error) {
	modelsJSON, err := json.Marshal(wireModels(models))
	if err != nil {
		return nil, fmt.Errorf("runner: job %s: encode models: %w", req.JobID, err)
	}
	env := append(os.Environ(), e.env...)
	keys := make([]string, 0, len(req.Exec.Env))
	for k := range req.Exec.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fmt.Errorf("runner: job %s: environment variable name %q is not valid", req.JobID, k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = append(env, k+"="+req.Exec.Env[k])
	}
	env = append(env,
		EnvJobID+"="+req.JobID,
		EnvOutputDir+"="+req.OutputDir,
		EnvModels+"="+string(modelsJSON),
	)
	return env, nil
}

func (e *Exec) track(cancel *context.CancelCauseFunc) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.running[cancel] = struct{}{}
	return true
}

func (e *Exec) untrack(cancel *context.CancelCauseFunc) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.running, cancel)
}

// parseProgressLine recognises {"progress":{...}}. The cheap checks first,
// because most stdout lines of most tools are not JSON.
func parseProgressLine(line []byte) (proto.Progress, bool) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' || !bytes.Contains(line, []byte(`"progress"`)) {
		return proto.Progress{}, false
	}
	var msg struct {
		Progress *proto.Progress `json:"progress"`
	}
	if json.Unmarshal(line, &msg) != nil || msg.Progress == nil {
		return proto.Progress{}, false
	}
	return *msg.Progress, true
}
