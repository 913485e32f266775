package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Model is one model a job needs, already in the host's cache.
type Model struct {
	Name   string
	Digest proto.Digest
	Size   int64
	// Path is the local file of the verified blob.
	Path string
}

// Request is one job for a Runner.
type Request struct {
	JobID string
	// Kind is "workflow", "worker" or "exec".
	Kind string
	// Input is the ComfyUI workflow, or the worker payload's input.
	Input json.RawMessage
	// Exec is the command for Kind "exec".
	Exec   *proto.ExecPayload
	Models []Model
	// OutputDir exists and is empty; the job writes its outputs there.
	OutputDir string
}

// Result is what a finished job left behind.
type Result struct {
	// Outputs are file names relative to Request.OutputDir, slash-separated.
	Outputs []string
}

// ResidentModel is a model held in a runner's memory: the vram tier.
type ResidentModel struct {
	Digest   proto.Digest
	Name     string
	Size     int64
	LastUsed time.Time
}

// Runner executes jobs on one slot.
type Runner interface {
	// Load makes models resident in the runner (no-op for exec). It returns
	// the digests that were already resident before the call.
	Load(ctx context.Context, models []Model) (alreadyResident []proto.Digest, err error)
	// Run executes one job. progress may be nil; it is never called after
	// Run returns.
	Run(ctx context.Context, req Request, progress func(proto.Progress)) (Result, error)
	// Resident lists the models held now, most recently used first.
	Resident() []ResidentModel
	// Close stops the runner's processes. It is safe to call more than once.
	Close() error
}

var (
	// ErrJobFailed marks a job that ran and failed on its own terms (the
	// worker answered ok:false, the command exited non-zero): retrying it on
	// the same input will most likely fail again.
	ErrJobFailed = errors.New("job failed")
	// ErrWorkerExited marks a call cut short because the worker process
	// died; the next call starts a new one.
	ErrWorkerExited = errors.New("worker exited")
	// ErrTooLarge marks a request whose models do not fit in the worker's
	// capacity even with nothing else resident.
	ErrTooLarge = errors.New("models larger than the worker's capacity")
	// ErrClosed is returned by calls on a closed runner.
	ErrClosed = errors.New("runner closed")
)

// maxLine bounds one line from a child process (a protocol message, or an
// exec job's stdout line).
const maxLine = 16 << 20

// wireModel is a model as the worker protocol and HEARTH_MODELS spell it.
type wireModel struct {
	Name   string       `json:"name"`
	Digest proto.Digest `json:"digest"`
	Path   string       `json:"path"`
	Size   int64        `json:"size"`
}

func wireModels(models []Model) []wireModel {
	out := make([]wireModel, 0, len(models))
	for _, m := range models {
		out = append(out, wireModel{Name: m.Name, Digest: m.Digest, Path: m.Path, Size: m.Size})
	}
	return out
}

// validateModels refuses what a runner cannot hand to a process and returns
// the models with duplicate digests removed, first occurrence kept. Like the
// other helpers here, its errors get the "runner: " prefix from the caller.
func validateModels(models []Model) ([]Model, error) {
	seen := make(map[proto.Digest]bool, len(models))
	out := make([]Model, 0, len(models))
	for _, m := range models {
		if err := m.Digest.Validate(); err != nil {
			return nil, fmt.Errorf("model %q: %w", m.Name, err)
		}
		if m.Size < 0 {
			return nil, fmt.Errorf("model %q has negative size %d", m.Name, m.Size)
		}
		if m.Path == "" {
			return nil, fmt.Errorf("model %q (%s) has no local path; fetch it into the cache first", m.Name, m.Digest.Short())
		}
		if seen[m.Digest] {
			continue
		}
		seen[m.Digest] = true
		out = append(out, m)
	}
	return out, nil
}

// listOutputs returns the regular files under dir, relative and
// slash-separated, sorted. Symlinks are skipped: an output must be bytes the
// job wrote, not a pointer to some other file on the host.
func listOutputs(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list outputs in %s: %w", dir, err)
	}
	slices.Sort(out)
	return out, nil
}

// checkOutputs makes sure the names a worker reported are local to dir and
// are regular files there, so the uploader never follows a bad name.
func checkOutputs(dir string, names []string) error {
	for _, name := range names {
		if !filepath.IsLocal(filepath.FromSlash(name)) {
			return fmt.Errorf("worker reported output %q, which is not a path inside the output directory", name)
		}
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			return fmt.Errorf("worker reported output %q: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("worker reported output %q, which is not a regular file", name)
		}
	}
	return nil
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
