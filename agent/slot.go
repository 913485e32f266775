package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/proto"
)

// slot runs one slot's assignments one at a time, in epoch order, and owns
// the slot's long-lived worker (started on first use).
type slot struct {
	a        *Agent
	gpu      int
	index    int
	ordinal  int // position among all the host's slots, in (gpu, slot) order
	capacity int64

	mu      sync.Mutex
	queue   []*jobRun
	running *jobRun
	worker  runner.Runner // the slot's worker or ComfyUI server; nil until first used
	// blocked, when set, says why the slot is out of service: foreign GPU
	// memory covers it (see accountVRAM).
	blocked string
	wake    chan struct{}
	// residentPins hold in the disk cache the blobs the worker has loaded,
	// so a model in VRAM is never evicted from under it: a worker restart
	// loads from the disk again.
	residentPins map[proto.Digest]func()
	// warmNext is what the slot loads once it has no job (see warm.go);
	// stopWarm cancels a warm-up under way when a job arrives.
	warmNext []proto.ModelRef
	stopWarm context.CancelFunc
}

func newSlot(a *Agent, gpu, index int, capacity int64) *slot {
	return &slot{a: a, gpu: gpu, index: index, capacity: capacity, wake: make(chan struct{}, 1)}
}

func (s *slot) enqueue(j *jobRun) {
	s.mu.Lock()
	s.queue = append(s.queue, j)
	slices.SortFunc(s.queue, func(x, y *jobRun) int { return compareUint(x.assignment.Epoch, y.assignment.Epoch) })
	// A job outranks any warm-up: the one under way stops, and the next
	// job brings its own advice.
	s.warmNext = nil
	if s.stopWarm != nil {
		s.stopWarm()
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// remove drops a queued (not yet running) job and reports whether it was
// still queued.
func (s *slot) remove(j *jobRun) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.queue)
	s.queue = slices.DeleteFunc(s.queue, func(x *jobRun) bool { return x == j })
	return len(s.queue) < n
}

func (s *slot) loop(ctx context.Context) {
	for {
		s.mu.Lock()
		var next *jobRun
		var warm []proto.ModelRef
		var wctx context.Context
		switch {
		case len(s.queue) > 0:
			next, s.queue = s.queue[0], s.queue[1:]
			s.running = next
		case len(s.warmNext) > 0:
			warm, s.warmNext = s.warmNext, nil
			wctx, s.stopWarm = context.WithCancel(ctx)
		}
		s.mu.Unlock()
		if warm != nil {
			s.a.warm(wctx, s, warm)
			s.mu.Lock()
			s.stopWarm()
			s.stopWarm = nil
			s.syncPinsLocked()
			s.mu.Unlock()
			continue
		}
		if next == nil {
			select {
			case <-ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		ok := s.a.execute(next, s)
		s.mu.Lock()
		s.running = nil
		if ok && len(s.queue) == 0 {
			s.warmNext = next.assignment.Warm
		}
		s.syncPinsLocked()
		s.mu.Unlock()
		s.a.forget(next)
		s.a.poke()
	}
}

// runnerFor returns the runner for a job kind, starting the slot's
// long-lived runner (a worker, or a ComfyUI server) the first time one is
// needed. It takes the slot from the GPU's pool while the runner lives.
func (s *slot) runnerFor(kind string) (runner.Runner, error) {
	if kind == "exec" {
		return s.a.exec, nil
	}
	if !s.a.takes(kind) {
		return nil, fmt.Errorf("%w: this host's slots run %s, which takes no %q jobs", runner.ErrJobFailed, s.a.cfg.Runner, kind)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked != "" {
		return nil, fmt.Errorf("%w: %s", errSlotBlocked, s.blocked)
	}
	if s.worker != nil {
		return s.worker, nil
	}
	pool := s.a.pools[s.poolIndex()]
	if err := pool.AcquireAt(s.index, 1, s.a.cfg.Runner); err != nil {
		return nil, err
	}
	log := s.a.log.With("gpu", s.gpu, "slot", s.index)
	var r runner.Runner
	var err error
	switch s.a.cfg.Runner {
	case RunnerComfyUI:
		r, err = s.newComfyUI(log)
	default:
		env := append([]string{
			"CUDA_VISIBLE_DEVICES=" + itoa(s.gpu),
			"HEARTH_SLOT=" + itoa(s.gpu) + "/" + itoa(s.index),
		}, s.a.cfg.WorkerEnv...)
		r, err = runner.NewWorker(runner.WorkerConfig{
			Command: s.a.cfg.WorkerCommand, Env: env, CapacityBytes: s.capacity, Logger: log,
		})
	}
	if err != nil {
		_ = pool.Release(s.index)
		return nil, err
	}
	s.worker = r
	return r, nil
}

// newComfyUI starts (or attaches to) the slot's ComfyUI server. Its model
// folders are the agent's named views; each slot has its own output
// directory, so servers never see each other's files.
func (s *slot) newComfyUI(log *slog.Logger) (runner.Runner, error) {
	cc := s.a.cfg.ComfyUI
	cfg := runner.ComfyUIConfig{
		Command: cc.Command, Env: cc.Env, Dir: cc.Dir, GPU: s.gpu,
		ExtraModelPaths: s.a.cfg.extraModelPathsFile(),
		OutputDir:       filepath.Join(s.a.cfg.DataDir, "comfyui", fmt.Sprintf("gpu%d-slot%d", s.gpu, s.index), "output"),
		CapacityBytes:   s.capacity, StartTimeout: cc.StartTimeout, Logger: log,
	}
	if len(cc.URLs) > 0 {
		// An attached server keeps its own output directory, which may be
		// on another machine: its outputs are fetched with /view only.
		cfg.URL, cfg.Command, cfg.OutputDir = cc.URLs[s.ordinal], nil, ""
	} else if err := os.MkdirAll(cfg.OutputDir, 0o750); err != nil {
		return nil, fmt.Errorf("agent: comfyui output directory: %w", err)
	}
	return runner.NewComfyUI(cfg)
}

func (s *slot) poolIndex() int {
	for i, g := range s.a.gpus {
		if g.Index == s.gpu {
			return i
		}
	}
	return 0
}

// state is the slot's part of a heartbeat.
func (s *slot) state() proto.SlotState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := proto.SlotState{GPU: s.gpu, Slot: s.index}
	if s.worker != nil {
		// Most recently used first, as the runner keeps them: the
		// scheduler predicts what the worker unloads next from the order.
		for _, m := range s.worker.Resident() {
			st.Resident = append(st.Resident, m.Digest)
		}
	}
	if s.running != nil {
		st.Running = s.running.assignment.JobID
	}
	st.Blocked = s.blocked
	for _, j := range s.queue {
		st.Queued = append(st.Queued, j.assignment.JobID)
	}
	return st
}

// syncPinsLocked pins what the worker holds now and unpins what it no
// longer holds. Callers hold s.mu.
func (s *slot) syncPinsLocked() {
	held := map[proto.Digest]bool{}
	if s.worker != nil {
		for _, m := range s.worker.Resident() {
			held[m.Digest] = true
		}
	}
	for d, unpin := range s.residentPins {
		if !held[d] {
			unpin()
			delete(s.residentPins, d)
		}
	}
	for d := range held {
		if _, ok := s.residentPins[d]; ok {
			continue
		}
		unpin, err := s.a.cache.Pin(d)
		if err != nil {
			continue // left the cache already (corrupt, removed): nothing to hold
		}
		if s.residentPins == nil {
			s.residentPins = make(map[proto.Digest]func())
		}
		s.residentPins[d] = unpin
	}
}

func (s *slot) close() error {
	s.mu.Lock()
	w := s.worker
	s.worker = nil
	s.syncPinsLocked()
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.Close()
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// errSlotBlocked fails a job placed on a slot just as it went out of
// service; the job is requeued (it is not the job's fault).
var errSlotBlocked = errors.New("slot out of service")

func (s *slot) isBlocked() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked != ""
}

// block takes the slot out of service if it has no work: always when it
// has no worker, and, with stopIdle, also by stopping an idle worker. It
// reports whether the slot is now blocked by this call.
func (s *slot) block(pool *gpu.SlotPool, why string, stopIdle bool) bool {
	s.mu.Lock()
	if s.blocked != "" || s.running != nil || len(s.queue) > 0 || (s.worker != nil && !stopIdle) {
		s.mu.Unlock()
		return false
	}
	w := s.worker
	s.worker = nil
	s.syncPinsLocked()
	if w != nil {
		_ = pool.Release(s.index)
	}
	if err := pool.AcquireAt(s.index, 1, foreignOwner); err != nil {
		s.mu.Unlock()
		if w != nil {
			_ = w.Close()
		}
		return false
	}
	s.blocked = why
	s.mu.Unlock()
	if w != nil {
		_ = w.Close() // outside the lock: a worker may take a while to stop
	}
	return true
}

// unblock puts a blocked slot back in service.
func (s *slot) unblock(pool *gpu.SlotPool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked == "" {
		return false
	}
	s.blocked = ""
	_ = pool.Release(s.index)
	return true
}

// setBlockedReason refreshes a blocked slot's reason with the latest
// figure.
func (s *slot) setBlockedReason(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked != "" {
		s.blocked = why
	}
}
