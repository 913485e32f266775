package fleetsim

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/hearth-gpu/hearth/proto"
)

// Family is a workflow class: which base model a job's checkpoint belongs to.
type Family string

const (
	FamilySD15 Family = "sd15"
	FamilySDXL Family = "sdxl"
	FamilyFlux Family = "flux"
)

// families is the order every loop over families follows, so that no map
// order leaks into a trace.
var families = []Family{FamilySD15, FamilySDXL, FamilyFlux}

func (f Family) known() bool {
	return f == FamilySD15 || f == FamilySDXL || f == FamilyFlux
}

// ModelKind is what a catalog entry is loaded as.
type ModelKind string

const (
	KindCheckpoint ModelKind = "checkpoint"
	KindLoRA       ModelKind = "lora"
	KindVAE        ModelKind = "vae"
)

func (k ModelKind) known() bool {
	return k == KindCheckpoint || k == KindLoRA || k == KindVAE
}

// Model is one catalog entry of a simulated fleet.
type Model struct {
	Name   string       `json:"name"`   // "checkpoints/sdxl-007.safetensors", "loras/flux-031.safetensors", …
	Digest proto.Digest `json:"digest"` // digestOfName(Name): a simulated model has no bytes to hash
	Size   int64        `json:"size"`
	Kind   ModelKind    `json:"kind"`
	Family Family       `json:"family"`
}

// Job is one arrival of a trace.
type Job struct {
	ID        string   `json:"id"`     // "j000001"…, unique
	At        float64  `json:"at_s"`   // seconds since the trace's start
	Models    []string `json:"models"` // catalog names, checkpoint first
	Family    Family   `json:"family"`
	RunS      float64  `json:"run_s"` // run time alone on a whole H200 GPU
	Priority  int      `json:"priority,omitempty"`
	VRAMBytes int64    `json:"vram_bytes,omitempty"` // 0: the models' size
}

// Trace is a catalog and the jobs that arrive, in arrival order.
type Trace struct {
	Catalog []Model
	Jobs    []Job
}

// digestOfName is a simulated model's digest: the sha256 of its name, so a
// trace names the same blobs every time it is generated or read.
func digestOfName(name string) proto.Digest {
	sum := sha256.Sum256([]byte(name))
	return proto.DigestFromSum(sum[:])
}

// traceLine is one line of a trace file: exactly one of the two is set.
type traceLine struct {
	Model *Model `json:"model,omitempty"`
	Job   *Job   `json:"job,omitempty"`
}

// maxTraceLine bounds one line of a trace file; a job line is a few hundred
// bytes.
const maxTraceLine = 1 << 20

// WriteJSONL writes t as a trace file: one JSON object per line, the
// catalog first as {"model": {…}} lines, then the jobs as {"job": {…}}.
func (t *Trace) WriteJSONL(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i := range t.Catalog {
		if err := enc.Encode(traceLine{Model: &t.Catalog[i]}); err != nil {
			return fmt.Errorf("fleetsim: write trace model %q: %w", t.Catalog[i].Name, err)
		}
	}
	for i := range t.Jobs {
		if err := enc.Encode(traceLine{Job: &t.Jobs[i]}); err != nil {
			return fmt.Errorf("fleetsim: write trace job %q: %w", t.Jobs[i].ID, err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("fleetsim: write trace: %w", err)
	}
	return nil
}

// ReadJSONL reads a trace file as WriteJSONL writes it. Blank lines and
// lines starting with '#' are skipped. It checks what a simulation relies
// on: every model is named once with a positive size, every job has a
// unique id, runs for a positive time and names models of the catalog, and
// jobs come in arrival order. A model line without a digest gets the one
// Generate would give its name.
func ReadJSONL(r io.Reader) (*Trace, error) {
	rd := &traceReader{
		models: make(map[string]bool),
		jobs:   make(map[string]bool),
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxTraceLine)
	n := 0
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		if err := rd.line(line); err != nil {
			return nil, fmt.Errorf("fleetsim: trace line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("fleetsim: trace line %d: longer than %d bytes: %w", n+1, maxTraceLine, err)
		}
		return nil, fmt.Errorf("fleetsim: read trace after line %d: %w", n, err)
	}
	return &rd.t, nil
}

// traceReader checks a trace one line at a time.
type traceReader struct {
	t      Trace
	models map[string]bool
	jobs   map[string]bool
	lastAt float64
}

func (rd *traceReader) line(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var l traceLine
	if err := dec.Decode(&l); err != nil {
		return fmt.Errorf("not a trace object: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more than one JSON value on the line: put each object on its own line")
	}
	switch {
	case l.Model != nil && l.Job != nil:
		return errors.New(`both "model" and "job" on one line: give each its own line`)
	case l.Model != nil:
		return rd.model(*l.Model)
	case l.Job != nil:
		return rd.job(*l.Job)
	}
	return errors.New(`neither "model" nor "job": each line is {"model": {…}} or {"job": {…}}`)
}

func (rd *traceReader) model(m Model) error {
	switch {
	case len(rd.t.Jobs) > 0:
		return fmt.Errorf("model %q after the first job: list the whole catalog before the jobs", m.Name)
	case m.Name == "":
		return errors.New("model with no name")
	case rd.models[m.Name]:
		return fmt.Errorf("model %q listed twice", m.Name)
	case m.Size <= 0:
		return fmt.Errorf("model %q: size %d: must be positive", m.Name, m.Size)
	case !m.Kind.known():
		return fmt.Errorf("model %q: unknown kind %q: use %q, %q or %q", m.Name, m.Kind, KindCheckpoint, KindLoRA, KindVAE)
	case !m.Family.known():
		return fmt.Errorf("model %q: %w", m.Name, unknownFamily(m.Family))
	}
	if m.Digest == "" {
		m.Digest = digestOfName(m.Name)
	} else if err := m.Digest.Validate(); err != nil {
		return fmt.Errorf("model %q: %w", m.Name, err)
	}
	rd.models[m.Name] = true
	rd.t.Catalog = append(rd.t.Catalog, m)
	return nil
}

func (rd *traceReader) job(j Job) error {
	switch {
	case j.ID == "":
		return errors.New("job with no id")
	case rd.jobs[j.ID]:
		return fmt.Errorf("job %q listed twice", j.ID)
	case !(j.At >= 0) || math.IsInf(j.At, 0):
		return fmt.Errorf("job %q: at_s %v: must be a time of zero or more", j.ID, j.At)
	case j.At < rd.lastAt:
		return fmt.Errorf("job %q: at_s %v is before the previous job's %v: jobs must be in arrival order", j.ID, j.At, rd.lastAt)
	case !(j.RunS > 0) || math.IsInf(j.RunS, 0):
		return fmt.Errorf("job %q: run_s %v: must be positive", j.ID, j.RunS)
	case j.VRAMBytes < 0:
		return fmt.Errorf("job %q: vram_bytes %d: must be zero (the models' size) or positive", j.ID, j.VRAMBytes)
	case j.Priority < proto.MinPriority || j.Priority > proto.MaxPriority:
		return fmt.Errorf("job %q: priority %d: must be within %d..%d", j.ID, j.Priority, proto.MinPriority, proto.MaxPriority)
	case !j.Family.known():
		return fmt.Errorf("job %q: %w", j.ID, unknownFamily(j.Family))
	case len(j.Models) == 0:
		return fmt.Errorf("job %q names no models: give at least its checkpoint", j.ID)
	}
	for i, name := range j.Models {
		if !rd.models[name] {
			return fmt.Errorf("job %q: model %q is not in the catalog above", j.ID, name)
		}
		for _, before := range j.Models[:i] {
			if before == name {
				return fmt.Errorf("job %q names model %q twice", j.ID, name)
			}
		}
	}
	rd.jobs[j.ID] = true
	rd.lastAt = j.At
	rd.t.Jobs = append(rd.t.Jobs, j)
	return nil
}

func unknownFamily(f Family) error {
	return fmt.Errorf("unknown family %q: use %q, %q or %q", f, FamilySD15, FamilySDXL, FamilyFlux)
}
