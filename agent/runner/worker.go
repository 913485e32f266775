package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Worker defaults and restart backoff.
const (
	DefaultStartTimeout  = 30 * time.Second
	DefaultCancelTimeout = 10 * time.Second
	// stopTimeout is how long Close lets a worker exit on its own after
	// closing its stdin.
	stopTimeout  = 5 * time.Second
	backoffFirst = 100 * time.Millisecond
	backoffMax   = 10 * time.Second
)

// WorkerConfig configures a Worker.
type WorkerConfig struct {
	// Command is the worker's argv; no shell is involved.
	Command []string
	// Env is added to the agent's own environment.
	Env []string
	// Dir is the worker's working directory; empty means the agent's.
	Dir string
	// CapacityBytes is the VRAM the slot gives this worker. Load unloads the
	// least recently used resident models the request does not need to make
	// room; a request larger than this on its own is refused. 0: no limit.
	CapacityBytes int64
	Logger        *slog.Logger
	// StartTimeout bounds the wait for the worker's hello; default 30 s.
	StartTimeout time.Duration
	// CancelTimeout is how long a cancelled request may take to end before
	// the worker is killed; default 10 s.
	CancelTimeout time.Duration
}

// Worker is the runner for a long-lived process that keeps models resident
// and speaks the JSON-lines protocol described in the package documentation.
// It restarts the process when it dies, so one Worker serves a slot for the
// agent's whole life.
type Worker struct {
	cfg WorkerConfig
	log *slog.Logger

	// callMu makes Load and Run take turns, so the residency bookkeeping and
	// the worker's memory never disagree in between.
	callMu sync.Mutex

	mu       sync.Mutex
	proc     *workerProc // nil between a death and the restart
	resident map[proto.Digest]*residentEntry
	useSeq   uint64    // orders uses; LastUsed may tie
	failures int       // consecutive deaths and failed starts
	retryAt  time.Time // no restart before this
	closed   bool
	closing  chan struct{}
}

type residentEntry struct {
	ResidentModel
	seq uint64
}

var _ Runner = (*Worker)(nil)

// NewWorker starts the worker process and waits for its hello.
func NewWorker(cfg WorkerConfig) (*Worker, error) {
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, fmt.Errorf("runner: worker config needs a command")
	}
	if cfg.CapacityBytes < 0 {
		return nil, fmt.Errorf("runner: worker capacity %d must not be negative", cfg.CapacityBytes)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.CancelTimeout <= 0 {
		cfg.CancelTimeout = DefaultCancelTimeout
	}
	cfg.Command = slices.Clone(cfg.Command)
	cfg.Env = slices.Clone(cfg.Env)
	w := &Worker{
		cfg:      cfg,
		log:      orDiscard(cfg.Logger),
		resident: make(map[proto.Digest]*residentEntry),
		closing:  make(chan struct{}),
	}
	p, err := startProc(context.Background(), w.cfg, w.log)
	if err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	w.proc = p
	return w, nil
}

// PID returns the worker process's id, or 0 while none runs.
func (w *Worker) PID() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil || w.proc.exited() {
		return 0
	}
	return w.proc.pid()
}

// Load makes models resident, unloading least recently used ones the
// request does not need when the capacity requires it.
func (w *Worker) Load(ctx context.Context, models []Model) ([]proto.Digest, error) {
	w.callMu.Lock()
	defer w.callMu.Unlock()
	already, _, err := w.load(ctx, models)
	if err != nil {
		return already, fmt.Errorf("runner: load: %w", w.explain(err))
	}
	return already, nil
}

// load does Load's work with callMu held and returns the process it used.
func (w *Worker) load(ctx context.Context, models []Model) ([]proto.Digest, *workerProc, error) {
	models, err := validateModels(models)
	if err != nil {
		return nil, nil, err
	}
	var need int64
	for _, m := range models {
		need += m.Size
	}
	if c := w.cfg.CapacityBytes; c > 0 && need > c {
		return nil, nil, fmt.Errorf("%w: the models need %d bytes, the worker has %d; place the job on a larger slot group", ErrTooLarge, need, c)
	}
	p, err := w.ensureProc(ctx)
	if err != nil {
		return nil, nil, err
	}
	already, missing, victims := w.plan(models)

	if len(victims) > 0 {
		w.log.Info("runner: unloading least recently used models to make room", "models", len(victims))
		m, err := p.call(ctx, w.cfg.CancelTimeout, func(id int64) any {
			return unloadRequest{ID: id, Op: opUnload, Digests: victims}
		}, nil)
		if m != nil && m.ok() {
			w.forget(p, victims)
		}
		if err != nil {
			return already, p, err
		}
		if !m.ok() {
			return already, p, fmt.Errorf("worker refused to unload: %s", m.failure())
		}
	}
	if len(missing) > 0 {
		start := time.Now()
		m, err := p.call(ctx, w.cfg.CancelTimeout, func(id int64) any {
			return loadRequest{ID: id, Op: opLoad, Models: wireModels(missing)}
		}, nil)
		if m != nil {
			w.remember(p, missing, m)
		}
		if err != nil {
			return already, p, err
		}
		w.noteAnswer()
		if !m.ok() {
			return already, p, fmt.Errorf("worker refused to load: %s", m.failure())
		}
		w.log.Info("runner: models loaded", "models", len(missing), "bytes", sumSizes(missing),
			"load_s", time.Since(start).Seconds(), "worker_load_s", m.LoadS)
	}
	return already, p, nil
}

// Run makes sure req.Models are resident (after a restart they are not),
// then runs the job in the worker. progress is called on Run's goroutine.
func (w *Worker) Run(ctx context.Context, req Request, progress func(proto.Progress)) (Result, error) {
	if req.Kind != "workflow" && req.Kind != "worker" {
		return Result{}, fmt.Errorf("runner: job %s: a worker runs kinds \"workflow\" and \"worker\", not %q", req.JobID, req.Kind)
	}
	if req.OutputDir == "" {
		return Result{}, fmt.Errorf("runner: job %s: no output directory", req.JobID)
	}
	w.callMu.Lock()
	defer w.callMu.Unlock()
	_, p, err := w.load(ctx, req.Models)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: load models: %w", req.JobID, w.explain(err))
	}
	digests := make([]proto.Digest, 0, len(req.Models))
	for _, m := range req.Models {
		digests = append(digests, m.Digest)
	}
	start := time.Now()
	m, err := p.call(ctx, w.cfg.CancelTimeout, func(id int64) any {
		return runRequest{ID: id, Op: opRun, JobID: req.JobID, Kind: req.Kind, Input: req.Input,
			Models: digests, OutputDir: req.OutputDir}
	}, progress)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: %w", req.JobID, w.explain(err))
	}
	w.noteAnswer()
	if !m.ok() {
		if w.isClosed() { // the worker ended the run because Close closed its input
			return Result{}, fmt.Errorf("runner: job %s: %w: the worker answered %q", req.JobID, ErrClosed, m.failure())
		}
		return Result{}, fmt.Errorf("runner: job %s: %w: %s", req.JobID, ErrJobFailed, m.failure())
	}
	if err := checkOutputs(req.OutputDir, m.Outputs); err != nil {
		return Result{}, fmt.Errorf("runner: job %s: %w", req.JobID, err)
	}
	w.touch(p, digests)
	w.log.Info("runner: job finished in worker", "job", req.JobID, "outputs", len(m.Outputs), "run_s", time.Since(start).Seconds())
	return Result{Outputs: slices.Clone(m.Outputs)}, nil
}

// Resident lists the models the worker holds, most recently used first. A
// worker that died holds none.
func (w *Worker) Resident() []ResidentModel {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reapLocked()
	out := make([]ResidentModel, 0, len(w.resident))
	for _, e := range w.sortedLocked() {
		out = append(out, e.ResidentModel)
	}
	slices.Reverse(out)
	return out
}

// Close stops the worker: it closes its stdin, waits up to 5 s for it to
// exit and then kills its process group. A call in flight fails.
func (w *Worker) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	close(w.closing)
	p := w.proc
	w.proc = nil
	clear(w.resident)
	w.mu.Unlock()
	if p != nil {
		p.shutdown(stopTimeout)
	}
	return nil
}

// ensureProc returns the live process, starting a new one after a death
// once the backoff allows.
func (w *Worker) ensureProc(ctx context.Context) (*workerProc, error) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil, ErrClosed
	}
	w.reapLocked()
	if w.proc != nil {
		p := w.proc
		w.mu.Unlock()
		return p, nil
	}
	wait := time.Until(w.retryAt)
	w.mu.Unlock()

	if wait > 0 {
		w.log.Info("runner: waiting before restarting the worker", "wait", wait)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting to restart the worker: %w", ctx.Err())
		case <-w.closing:
			return nil, ErrClosed
		}
	}
	p, err := startProc(ctx, w.cfg, w.log)

	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.failures++
		w.retryAt = time.Now().Add(backoffDelay(w.failures))
		return nil, err
	}
	if w.closed {
		go p.shutdown(stopTimeout)
		return nil, ErrClosed
	}
	w.proc = p
	return p, nil
}

// reapLocked notices a dead process: its residency is gone, and the next
// start waits out the backoff counted from its death.
func (w *Worker) reapLocked() {
	p := w.proc
	if p == nil || !p.exited() {
		return
	}
	w.proc = nil
	clear(w.resident)
	w.failures++
	w.retryAt = p.diedAt().Add(backoffDelay(w.failures))
}

// backoffDelay is the wait before restart number n after consecutive
// failures: 0.1 s, doubling, at most 10 s.
func backoffDelay(n int) time.Duration {
	if n <= 0 {
		return 0
	}
	d := backoffFirst
	for i := 1; i < n && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

func (w *Worker) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed
}

func (w *Worker) explain(err error) error { return explainClosed(w.isClosed(), err) }

// explainClosed marks an error caused by a runner's Close as ErrClosed, so
// the agent does not take a shutdown for a broken worker.
func explainClosed(closed bool, err error) error {
	if closed && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// noteAnswer resets the backoff: the worker answered a request.
func (w *Worker) noteAnswer() {
	w.mu.Lock()
	w.failures = 0
	w.mu.Unlock()
}

func sumSizes(models []Model) int64 {
	var n int64
	for _, m := range models {
		n += m.Size
	}
	return n
}

// sortedLocked returns the resident entries, least recently used first.
func (w *Worker) sortedLocked() []*residentEntry {
	es := make([]*residentEntry, 0, len(w.resident))
	for _, e := range w.resident {
		es = append(es, e)
	}
	// seq, not LastUsed: it is strictly ordered even when uses share a clock tick.
	slices.SortFunc(es, func(a, b *residentEntry) int { return cmp.Compare(a.seq, b.seq) })
	return es
}
