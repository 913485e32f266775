package refworker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// OutputName is the file every run writes, named as ComfyUI's SaveImage
// names its first image.
const OutputName = "hearth_00001_.png"

// model is one entry of a load request.
type model struct {
	Name   string       `json:"name"`
	Digest proto.Digest `json:"digest"`
	Path   string       `json:"path"`
	Size   int64        `json:"size"`
}

type loadResponse struct {
	ID     int64          `json:"id"`
	OK     bool           `json:"ok"`
	Error  string         `json:"error,omitempty"`
	Loaded []proto.Digest `json:"loaded"`
	LoadS  float64        `json:"load_s"`
}

type runResponse struct {
	ID      int64    `json:"id"`
	OK      bool     `json:"ok"`
	Outputs []string `json:"outputs"`
}

type progressEvent struct {
	ID    int64  `json:"id"`
	Event string `json:"event"`
	Value int    `json:"value"`
	Max   int    `json:"max"`
	Node  string `json:"node"`
}

// load reads and verifies each model not yet held. It stops at the first
// failure; the answer's loaded list then says which did load.
func (w *worker) load(ctx context.Context, req request) any {
	start := time.Now()
	resp := loadResponse{ID: req.ID, Loaded: []proto.Digest{}}
	var models []model
	if err := json.Unmarshal(req.Models, &models); err != nil {
		resp.Error = fmt.Sprintf("refworker: load wants models as [{name, digest, path, size}]: %v", err)
		return resp
	}
	for _, m := range models {
		w.mu.Lock()
		_, held := w.models[m.Digest]
		w.mu.Unlock()
		if !held {
			data, err := readVerified(ctx, m)
			if err != nil {
				resp.Error = err.Error()
				if ctx.Err() != nil {
					resp.Error = errCancelled
				}
				resp.LoadS = time.Since(start).Seconds()
				return resp
			}
			w.mu.Lock()
			w.models[m.Digest] = data
			w.mu.Unlock()
			w.log.Info("refworker: model loaded", "name", m.Name, "digest", m.Digest.Short(), "bytes", len(data))
		}
		resp.Loaded = append(resp.Loaded, m.Digest)
	}
	resp.OK = true
	resp.LoadS = time.Since(start).Seconds()
	return resp
}

// readVerified reads a model file fully and checks it against its digest:
// a worker must never compute with bytes that are not the ones named.
func readVerified(ctx context.Context, m model) ([]byte, error) {
	if err := m.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("refworker: model %q: %w", m.Name, err)
	}
	f, err := os.Open(m.Path)
	if err != nil {
		return nil, fmt.Errorf("refworker: model %q: %w", m.Name, err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if m.Size > 0 {
		buf.Grow(int(m.Size))
	}
	h := sha256.New()
	chunk := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("refworker: model %q: %w", m.Name, err)
		}
		n, err := f.Read(chunk)
		buf.Write(chunk[:n])
		h.Write(chunk[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("refworker: model %q: read %s: %w", m.Name, m.Path, err)
		}
	}
	if m.Size > 0 && int64(buf.Len()) != m.Size {
		return nil, fmt.Errorf("refworker: model %q: file %s is %d bytes, want %d", m.Name, m.Path, buf.Len(), m.Size)
	}
	if got := proto.DigestFromSum(h.Sum(nil)); got != m.Digest {
		return nil, fmt.Errorf("refworker: model %q: file %s has digest %s, want %s; refusing to load it", m.Name, m.Path, got, m.Digest)
	}
	return buf.Bytes(), nil
}

// unload frees the named models; unknown digests are fine.
func (w *worker) unload(req request) any {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range req.Digests {
		if data, ok := w.models[d]; ok {
			delete(w.models, d)
			w.log.Info("refworker: model unloaded", "digest", d.Short(), "bytes", len(data))
		}
	}
	return response{ID: req.ID, OK: true}
}

// run checks its models are held, reports progress over w.steps steps and
// writes the PNG derived from the job's input and its models' digests.
func (w *worker) run(ctx context.Context, req request) any {
	var digests []proto.Digest
	if len(req.Models) > 0 {
		if err := json.Unmarshal(req.Models, &digests); err != nil {
			return response{ID: req.ID, Error: fmt.Sprintf("refworker: run wants models as a list of digests: %v", err)}
		}
	}
	if req.OutputDir == "" {
		return response{ID: req.ID, Error: "refworker: run needs an output_dir"}
	}
	w.mu.Lock()
	for _, d := range digests {
		if _, ok := w.models[d]; !ok {
			w.mu.Unlock()
			return response{ID: req.ID, Error: fmt.Sprintf("refworker: model %s is not loaded; load it before a run that uses it", d)}
		}
	}
	w.mu.Unlock()

	sum := Fingerprint(req.Input, digests)
	for i := 1; i <= w.steps; i++ {
		if err := sleep(ctx, w.stepDelay); err != nil {
			w.log.Info("refworker: run cancelled", "job", req.JobID, "step", i)
			return response{ID: req.ID, Error: errCancelled}
		}
		w.write(progressEvent{ID: req.ID, Event: "progress", Value: i, Max: w.steps, Node: "sampler"})
	}
	if err := writePNG(filepath.Join(req.OutputDir, OutputName), sum); err != nil {
		return response{ID: req.ID, Error: err.Error()}
	}
	w.log.Info("refworker: run finished", "job", req.JobID, "output", OutputName)
	return runResponse{ID: req.ID, OK: true, Outputs: []string{OutputName}}
}

// Fingerprint is what a run's image is derived from: sha256 over the input
// bytes as received, then each model digest in order.
func Fingerprint(input []byte, digests []proto.Digest) [sha256.Size]byte {
	h := sha256.New()
	h.Write(input)
	for _, d := range digests {
		h.Write([]byte(d))
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// Image paints the 64x64 picture for a fingerprint: 8x8 cells, one byte of
// the hash each, over gradients seeded by its first bytes.
func Image(sum [sha256.Size]byte) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for y := range 64 {
		for x := range 64 {
			cell := sum[(x/8+y/8*8)%sha256.Size]
			img.SetNRGBA(x, y, color.NRGBA{
				R: sum[0] ^ cell,
				G: sum[1] ^ byte(x*4),
				B: sum[2] ^ byte(y*4),
				A: 255,
			})
		}
	}
	return img
}

func writePNG(path string, sum [sha256.Size]byte) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, Image(sum)); err != nil {
		return fmt.Errorf("refworker: encode png: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("refworker: write output: %w", err)
	}
	return nil
}

// sleep waits d or until ctx ends; with d == 0 it only checks ctx.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
