package runner

import (
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// The Worker keeps its own record of what the process holds, because the
// record is what the agent reports as the vram tier and what the capacity
// check uses, and asking the process would cost a round trip each time.
// Every change names the process it is about, so an answer from a process
// that has since died never lands in its successor's record.

// plan splits a load request into the models already resident (touched,
// since the coming job uses them), the ones to load, and the resident ones
// to unload first so that everything fits in the capacity, least recently
// used first, never one the request needs.
func (w *Worker) plan(models []Model) (already []proto.Digest, missing []Model, victims []proto.Digest) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	wanted := make(map[proto.Digest]bool, len(models))
	for _, m := range models {
		wanted[m.Digest] = true
		if e, ok := w.resident[m.Digest]; ok {
			already = append(already, m.Digest)
			w.useLocked(e, now)
			continue
		}
		missing = append(missing, m)
	}
	c := w.cfg.CapacityBytes
	if c <= 0 || len(missing) == 0 {
		return already, missing, nil
	}
	var used int64
	for _, e := range w.resident {
		used += e.Size
	}
	need := sumSizes(missing)
	for _, e := range w.sortedLocked() {
		if used+need <= c {
			break
		}
		if wanted[e.Digest] {
			continue
		}
		victims = append(victims, e.Digest)
		used -= e.Size
	}
	return already, missing, victims
}

// remember records what a load answer says is now resident: everything
// asked for on success, the listed subset on failure.
func (w *Worker) remember(p *workerProc, asked []Model, m *workerMsg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != p {
		return
	}
	var loaded map[proto.Digest]bool
	if !m.ok() {
		loaded = make(map[proto.Digest]bool, len(m.Loaded))
		for _, d := range m.Loaded {
			loaded[d] = true
		}
	}
	now := time.Now()
	for _, mod := range asked {
		if loaded != nil && !loaded[mod.Digest] {
			continue
		}
		e := &residentEntry{ResidentModel: ResidentModel{Digest: mod.Digest, Name: mod.Name, Size: mod.Size}}
		w.useLocked(e, now)
		w.resident[mod.Digest] = e
	}
}

// forget drops unloaded models from the record.
func (w *Worker) forget(p *workerProc, digests []proto.Digest) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != p {
		return
	}
	for _, d := range digests {
		delete(w.resident, d)
	}
}

// touch marks models as used by a job that just finished.
func (w *Worker) touch(p *workerProc, digests []proto.Digest) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc != p {
		return
	}
	now := time.Now()
	for _, d := range digests {
		if e, ok := w.resident[d]; ok {
			w.useLocked(e, now)
		}
	}
}

func (w *Worker) useLocked(e *residentEntry, now time.Time) {
	w.useSeq++
	e.seq = w.useSeq
	e.LastUsed = now
}
