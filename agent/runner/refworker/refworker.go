// Package refworker is the reference worker: a complete implementation of
// the worker side of the JSON-lines protocol that package runner documents,
// used by the demo and the tests in place of a GPU worker. It is not a GPU
// worker and computes nothing useful: loading a model reads its file, checks
// its sha256 and keeps the bytes in memory (the "VRAM" it simulates, so a
// second load of the same digest is instant); running a job hashes the job's
// input with the digests of its models and paints a deterministic 64x64 PNG
// from that hash, reporting progress over a few steps.
//
// It is the model for real workers too: whoever writes one in Python can
// read this package next to the protocol description and copy its answers.
// The main binary exposes it as the hidden subcommand "hearth refworker".
package refworker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// protocolVersion is the runner protocol version this worker speaks.
const protocolVersion = 1

// maxLine is the protocol's line limit.
const maxLine = 16 << 20

// errCancelled is the error text of a request ended by a cancel.
const errCancelled = "cancelled"

// Main runs the worker until stdin ends and returns the process exit code:
// 0 after a clean end of input, 2 for bad flags.
//
// Flags: --step-delay (pause before each progress step, default 0, so the
// demo can make a run visibly take time), --steps (progress steps per run,
// default 4), --name (the name in the hello, default "refworker").
func Main(stdin io.Reader, stdout, stderr io.Writer, args []string) int {
	fs := flag.NewFlagSet("refworker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stepDelay := fs.Duration("step-delay", 0, "pause before each progress step of a run")
	steps := fs.Int("steps", 4, "progress steps per run")
	name := fs.String("name", "refworker", "name announced in the hello")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *steps < 1 || *stepDelay < 0 {
		fmt.Fprintln(stderr, "refworker: --steps must be at least 1 and --step-delay not negative")
		return 2
	}
	w := &worker{
		log:       slog.New(slog.NewTextHandler(stderr, nil)),
		out:       json.NewEncoder(stdout),
		stepDelay: *stepDelay,
		steps:     *steps,
		models:    make(map[proto.Digest][]byte),
		inflight:  make(map[int64]context.CancelFunc),
	}
	w.out.SetEscapeHTML(false)
	w.write(hello{Event: "hello", Protocol: protocolVersion, Name: *name, PID: os.Getpid()})
	w.serve(stdin)
	return 0
}

// worker is the state of one refworker process. Loads and runs execute on
// their own goroutines so the input loop keeps reading and a cancel is seen
// while they work; everything else is answered in order, on the loop.
type worker struct {
	log       *slog.Logger
	stepDelay time.Duration
	steps     int

	outMu sync.Mutex
	out   *json.Encoder

	mu       sync.Mutex
	models   map[proto.Digest][]byte // the simulated VRAM
	inflight map[int64]context.CancelFunc
	wg       sync.WaitGroup
}

// request is any request line; which fields matter depends on Op. Models is
// raw because load sends model objects and run sends digests.
type request struct {
	ID        int64           `json:"id"`
	Op        string          `json:"op"`
	Models    json.RawMessage `json:"models"`
	Digests   []proto.Digest  `json:"digests"`
	JobID     string          `json:"job_id"`
	Kind      string          `json:"kind"`
	Input     json.RawMessage `json:"input"`
	OutputDir string          `json:"output_dir"`
	Target    int64           `json:"target"`
}

type hello struct {
	Event    string `json:"event"`
	Protocol int    `json:"protocol"`
	Name     string `json:"name"`
	PID      int    `json:"pid"`
}

// response is a final answer without op-specific fields.
type response struct {
	ID    int64  `json:"id"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// serve reads requests until stdin ends, then cancels what still runs and
// waits for it, so every request sent before the end gets its answer.
func (w *worker) serve(stdin io.Reader) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := bufio.NewReaderSize(stdin, 64<<10)
	for {
		line, err := readLine(r)
		if errors.Is(err, errLineTooLong) {
			w.log.Error("refworker: request line longer than 16 MiB; dropped")
			continue
		}
		if len(line) > 0 {
			w.handle(ctx, line)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				w.log.Error("refworker: read requests", "err", err)
			}
			break
		}
	}
	cancel()
	w.wg.Wait()
}

func (w *worker) handle(ctx context.Context, line []byte) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		w.log.Error("refworker: request is not a JSON object; ignored", "err", err)
		return
	}
	switch req.Op {
	case "cancel":
		w.mu.Lock()
		if cancel := w.inflight[req.Target]; cancel != nil {
			cancel()
		}
		w.mu.Unlock()
		w.write(response{ID: req.ID, OK: true})
	case "unload":
		w.write(w.unload(req))
	case "load", "run":
		ctx, cancel := context.WithCancel(ctx)
		w.mu.Lock()
		w.inflight[req.ID] = cancel
		w.mu.Unlock()
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer func() {
				w.mu.Lock()
				delete(w.inflight, req.ID)
				w.mu.Unlock()
				cancel()
			}()
			if req.Op == "load" {
				w.write(w.load(ctx, req))
			} else {
				w.write(w.run(ctx, req))
			}
		}()
	default:
		w.write(response{ID: req.ID, Error: fmt.Sprintf("refworker: unknown op %q; this worker knows load, unload, run and cancel", req.Op)})
	}
}

// write sends one message line; lines from concurrent requests never mix.
func (w *worker) write(msg any) {
	w.outMu.Lock()
	defer w.outMu.Unlock()
	if err := w.out.Encode(msg); err != nil {
		w.log.Error("refworker: write to agent", "err", err)
	}
}

var errLineTooLong = errors.New("refworker: line too long")

// readLine returns the next line without its "\n". A line over maxLine is
// consumed and reported as errLineTooLong, so the loop can go on.
func readLine(r *bufio.Reader) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := r.ReadSlice('\n')
		if !tooLong {
			if len(line)+len(chunk) > maxLine+1 {
				tooLong, line = true, nil
			} else {
				line = append(line, chunk...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if tooLong && err == nil {
			return nil, errLineTooLong
		}
		if n := len(line); n > 0 && line[n-1] == '\n' {
			line = line[:n-1]
		}
		return line, err
	}
}
