package agent

import (
	"context"

	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/proto"
)

// Warming: with a placement the scheduler advises the slot to load, once
// the job is done, models no job has asked it for yet (Assignment.Warm:
// what jobs like this one most often ask for besides), because the next
// such job likely will. It is advice: a slot loads only what fits beside
// what its worker holds, never evicts for it, and drops it when a job
// arrives. ComfyUI loads models only inside a prompt, so the comfyui
// runner does not warm.

// warm loads what of models fits into sl's worker, fetching into the
// cache what it lacks.
func (a *Agent) warm(ctx context.Context, sl *slot, models []proto.ModelRef) {
	if a.cfg.Runner == RunnerComfyUI || !a.takes("worker") {
		return
	}
	r, err := sl.runnerFor("worker")
	if err != nil {
		a.log.Debug("no warm-up: the slot's worker is unavailable", "gpu", sl.gpu, "slot", sl.index, "err", err)
		return
	}
	held := make(map[proto.Digest]bool)
	var used int64
	for _, m := range r.Resident() {
		held[m.Digest] = true
		used += m.Size
	}
	var load []runner.Model
	for _, m := range models {
		if held[m.Digest] || sl.capacity > 0 && used+m.Size > sl.capacity {
			continue
		}
		path, unpin, err := a.fetchPinned(ctx, m)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Info("warm-up skips a model it cannot fetch", "model", m.Name, "err", err)
			}
			continue
		}
		defer unpin()
		if err := a.views.Link(m.Name, m.Digest); err != nil {
			continue
		}
		a.promote(m)
		held[m.Digest] = true
		used += m.Size
		load = append(load, runner.Model{Name: m.Name, Digest: m.Digest, Size: m.Size, Path: path})
	}
	if len(load) == 0 || ctx.Err() != nil {
		return
	}
	if _, err := r.Load(ctx, load); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("warm-up failed", "gpu", sl.gpu, "slot", sl.index, "err", err)
		}
		return
	}
	a.log.Debug("warmed", "gpu", sl.gpu, "slot", sl.index, "models", len(load))
	a.poke() // the scheduler should see the new residency
}
