package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/proto"
)

// execute runs one assignment to its end and reports each transition. If
// the coordinator refuses a report (the job was placed elsewhere), it stops
// at once and reports nothing more.
// execute runs one assignment to its end and reports whether it succeeded.
func (a *Agent) execute(j *jobRun, sl *slot) (succeeded bool) {
	as := j.assignment
	log := a.log.With("job", as.JobID, "gpu", sl.gpu, "slot", sl.index)
	if j.ctx.Err() != nil {
		return false // withdrawn while queued
	}
	// The spec's timeout bounds the attempt from pickup to the last report.
	ctx := j.ctx
	if as.Spec.TimeoutS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(j.ctx, time.Duration(as.Spec.TimeoutS*float64(time.Second)))
		defer cancel()
	}
	fail := func(stage string, err error) {
		if a.ctx.Err() != nil {
			return // shutting down; the coordinator requeues
		}
		if j.ctx.Err() != nil {
			log.Info("job stopped", "stage", stage)
			return // withdrawn (cancelled, or placed elsewhere): the coordinator already moved on
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			log.Warn("job timed out", "stage", stage, "timeout_s", as.Spec.TimeoutS)
			a.report(as, proto.JobReport{State: proto.JobTimedOut, Error: fmt.Sprintf("%s: ran past timeout_s=%g", stage, as.Spec.TimeoutS)})
			return
		}
		// A worker or server that died under the job is not the job's
		// fault: the coordinator requeues it while it has attempts left.
		retry := errors.Is(err, runner.ErrWorkerExited) || errors.Is(err, errSlotBlocked)
		log.Warn("job failed", "stage", stage, "err", err, "retryable", retry)
		a.report(as, proto.JobReport{State: proto.JobFailed, Error: fmt.Sprintf("%s: %v", stage, err), Retryable: retry})
	}

	start := time.Now()
	if !a.report(as, proto.JobReport{State: proto.JobFetching}) {
		return
	}
	models := make([]runner.Model, 0, len(as.Models))
	for _, m := range as.Models {
		path, unpin, err := a.fetchPinned(ctx, m)
		if err != nil {
			fail("fetch "+m.Name, err)
			return
		}
		defer unpin()
		if err := a.views.Link(m.Name, m.Digest); err != nil {
			fail("link "+m.Name, err)
			return
		}
		a.promote(m)
		models = append(models, runner.Model{Name: m.Name, Digest: m.Digest, Size: m.Size, Path: path})
	}

	if !a.report(as, proto.JobReport{State: proto.JobLoading}) {
		return
	}
	kind := as.Spec.Kind()
	r, err := sl.runnerFor(kind)
	if err != nil {
		fail("start worker", err)
		return
	}
	if _, err := r.Load(ctx, models); err != nil {
		fail("load models", err)
		return
	}
	loadS := time.Since(start).Seconds()
	a.poke() // the slot's residency changed: let the scheduler see it

	if !a.report(as, proto.JobReport{State: proto.JobRunning, LoadS: loadS}) {
		return
	}
	outDir := filepath.Join(a.cfg.workDir(), fmt.Sprintf("%s-%d", as.JobID, as.Epoch))
	if err := os.MkdirAll(outDir, 0o750); err != nil {
		fail("prepare output dir", err)
		return
	}
	defer os.RemoveAll(outDir)
	req := runner.Request{JobID: as.JobID, Kind: kind, Models: models, OutputDir: outDir, Exec: as.Spec.Exec}
	switch kind {
	case "workflow":
		req.Input = as.Spec.Workflow
	case "worker":
		req.Input = as.Spec.Worker.Input
	}
	runStart := time.Now()
	res, err := r.Run(ctx, req, a.progressReporter(as))
	runS := time.Since(runStart).Seconds()
	if err != nil {
		fail("run", err)
		return
	}

	if !a.report(as, proto.JobReport{State: proto.JobUploading, LoadS: loadS, RunS: runS}) {
		return
	}
	outputs, err := a.storeOutputs(ctx, as.JobID, outDir, res.Outputs)
	if err != nil {
		fail("store outputs", err)
		return
	}
	if !a.report(as, proto.JobReport{State: proto.JobSucceeded, LoadS: loadS, RunS: runS, Outputs: outputs}) {
		return false
	}
	log.Info("job succeeded", "load_s", fmt.Sprintf("%.3f", loadS), "run_s", fmt.Sprintf("%.3f", runS), "outputs", len(outputs))
	return true
}

// fetchPinned brings a model into the cache and pins it there. Another job's
// fetch can evict the blob between Fetch and Pin, so that race is retried.
func (a *Agent) fetchPinned(ctx context.Context, m proto.ModelRef) (string, func(), error) {
	for attempt := 0; ; attempt++ {
		path, src, err := a.cache.FetchBlob(ctx, cachefs.BlobOf(m, a.origin))
		if err != nil {
			return "", nil, err
		}
		unpin, err := a.cache.Pin(m.Digest)
		if err == nil {
			a.log.Debug("model in cache", "model", m.Name, "fetched", src.Fetched(), "from_peers", src.Peer, "from_origin", src.Origin)
			return path, unpin, nil
		}
		if !errors.Is(err, cachefs.ErrNotCached) || attempt == 2 {
			return "", nil, err
		}
	}
}

// progressReporter forwards worker progress to the coordinator at most once
// a second, and never blocks the worker: a slow coordinator drops updates,
// not the run.
func (a *Agent) progressReporter(as proto.Assignment) func(proto.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(p proto.Progress) {
		mu.Lock()
		if time.Since(last) < time.Second {
			mu.Unlock()
			return
		}
		last = time.Now()
		mu.Unlock()
		go a.report(as, proto.JobReport{State: proto.JobRunning, Progress: &p})
	}
}
