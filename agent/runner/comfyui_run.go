package runner

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/hearth-gpu/hearth/proto"
)

// How a prompt is followed. ComfyUI sends every message about a prompt to
// the WebSocket of the client_id it was submitted with, as a JSON text
// message {"type", "data"}; data carries the prompt_id. Binary messages
// (previews) are skipped.
const (
	comfyWSReadLimit = 64 << 20
	// comfyHistoryPoll is how often the history is read when the WebSocket
	// broke while the server still answers.
	comfyHistoryPoll = 250 * time.Millisecond
	// comfyMaxOutput bounds one output file fetched with /view.
	comfyMaxOutput = 16 << 30
)

// comfyMsg is one WebSocket message.
type comfyMsg struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// comfyData holds the fields of the message types the runner acts on.
type comfyData struct {
	PromptID string  `json:"prompt_id"`
	Node     *string `json:"node"`
	Value    int     `json:"value"`
	Max      int     `json:"max"`
	// execution_error and execution_interrupted
	NodeID           string `json:"node_id"`
	NodeType         string `json:"node_type"`
	ExceptionMessage string `json:"exception_message"`
	ExceptionType    string `json:"exception_type"`
}

// comfyOutputFile is one file in a node's history outputs ("images",
// "gifs", "videos", "audio", or any other list of files).
type comfyOutputFile struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

type comfyHistory struct {
	Outputs map[string]map[string]json.RawMessage `json:"outputs"`
	Status  struct {
		StatusStr string `json:"status_str"`
		Completed bool   `json:"completed"`
		// Messages are the prompt's execution messages as
		// [type, data] pairs.
		Messages [][]json.RawMessage `json:"messages"`
	} `json:"status"`
}

// failure is the error a prompt that ended in an error reports: its
// execution_error message, as the WebSocket would have carried it.
func (h *comfyHistory) failure() error {
	for _, m := range h.Status.Messages {
		var typ string
		var d comfyData
		if len(m) == 2 && json.Unmarshal(m[0], &typ) == nil && typ == "execution_error" && json.Unmarshal(m[1], &d) == nil {
			return execError(d)
		}
	}
	return fmt.Errorf("%w: ComfyUI reports the prompt ended in an error", ErrJobFailed)
}

func execError(d comfyData) error {
	return fmt.Errorf("%w: node %s (%s) raised %s: %s", ErrJobFailed, d.NodeID, d.NodeType, d.ExceptionType, d.ExceptionMessage)
}

// Run submits the job's workflow to the server, follows it to its end and
// fetches the files it saved into req.OutputDir. progress is called on
// Run's goroutine.
func (c *ComfyUI) Run(ctx context.Context, req Request, progress func(proto.Progress)) (Result, error) {
	if req.Kind != "workflow" {
		return Result{}, fmt.Errorf("runner: job %s: %w: a ComfyUI server runs workflows, not %q jobs", req.JobID, ErrJobFailed, req.Kind)
	}
	if req.OutputDir == "" {
		return Result{}, fmt.Errorf("runner: job %s: no output directory", req.JobID)
	}
	c.callMu.Lock()
	defer c.callMu.Unlock()
	_, base, err := c.load(ctx, req.Models)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: comfyui: %w", req.JobID, c.explain(err))
	}
	start := time.Now()
	outs, err := c.runPrompt(ctx, base, req, progress)
	if err != nil {
		return Result{}, fmt.Errorf("runner: job %s: comfyui: %w", req.JobID, c.explain(err))
	}
	c.mu.Lock()
	c.failures = 0
	c.mu.Unlock()
	c.log.Info("runner: job finished in ComfyUI", "job", req.JobID, "outputs", len(outs), "run_s", time.Since(start).Seconds())
	return Result{Outputs: outs}, nil
}

// gone explains a failed exchange with the server: ErrWorkerExited when the
// managed process died or the server stopped answering, else cause.
func (c *ComfyUI) gone(base string, cause error) error {
	c.mu.Lock()
	p := c.proc
	c.mu.Unlock()
	if c.cfg.URL == "" {
		if p == nil || p.base != base {
			return fmt.Errorf("%w: the ComfyUI server went away: %w", ErrWorkerExited, cause)
		}
		select {
		case <-p.done:
			return p.exitError()
		case <-time.After(200 * time.Millisecond):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ping(ctx, base); err != nil {
		if p != nil && c.cfg.URL == "" {
			p.kill("it stopped answering")
		}
		c.mu.Lock()
		clear(c.resident)
		c.mu.Unlock()
		return fmt.Errorf("%w: the ComfyUI server at %s stopped answering (%w) after: %w", ErrWorkerExited, base, err, cause)
	}
	return cause
}

func (c *ComfyUI) procDone(base string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil && c.proc.base == base {
		return c.proc.done
	}
	return nil
}

// comfyGreetTimeout bounds the wait for ComfyUI's first WebSocket message.
const comfyGreetTimeout = 5 * time.Second

func (c *ComfyUI) runPrompt(ctx context.Context, base string, req Request, progress func(proto.Progress)) ([]string, error) {
	// Connect first: ComfyUI sends a prompt's messages only to a client
	// connected when they happen.
	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/ws?clientId=" + url.QueryEscape(c.clientID)
	dialCtx, cancelDial := context.WithTimeout(ctx, 10*time.Second)
	conn, _, err := websocket.Dial(dialCtx, wsURL, &websocket.DialOptions{HTTPClient: c.http})
	cancelDial()
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("cancelled: %w", ctx.Err())
		}
		return nil, c.gone(base, fmt.Errorf("connect to %s: %w", wsURL, err))
	}
	defer conn.CloseNow()
	conn.SetReadLimit(comfyWSReadLimit)
	readCtx, stopRead := context.WithCancel(context.Background())
	defer stopRead()
	msgs := make(chan comfyMsg, 1024)
	readErr := make(chan error, 1)
	go func() {
		for {
			typ, b, err := conn.Read(readCtx)
			if err != nil {
				readErr <- err
				return
			}
			var m comfyMsg
			if typ != websocket.MessageText || json.Unmarshal(b, &m) != nil {
				continue
			}
			select {
			case msgs <- m:
			case <-readCtx.Done():
				return
			}
		}
	}()

	// ComfyUI greets a new socket with a "status" message once it is
	// registered; a prompt queued before that could run with its first
	// messages sent nowhere. Whatever arrives first shows the socket is
	// registered, and cannot concern a prompt not queued yet.
	greet := time.NewTimer(comfyGreetTimeout)
	select {
	case <-msgs:
	case err := <-readErr:
		greet.Stop()
		return nil, c.gone(base, fmt.Errorf("the WebSocket closed before ComfyUI greeted it: %w", err))
	case <-greet.C:
		c.log.Warn("runner: ComfyUI sent no status on its WebSocket; queueing anyway", "job", req.JobID)
	case <-ctx.Done():
		greet.Stop()
		return nil, fmt.Errorf("cancelled: %w", ctx.Err())
	}
	greet.Stop()

	var accepted struct {
		PromptID string `json:"prompt_id"`
	}
	err = c.post(ctx, base, "/prompt", map[string]any{"prompt": req.Input, "client_id": c.clientID}, &accepted)
	var hse *httpStatusError
	switch {
	case errors.As(err, &hse) && hse.status == http.StatusBadRequest:
		return nil, fmt.Errorf("%w: ComfyUI refused the workflow: %s", ErrJobFailed, describePromptError(hse.body))
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("cancelled: %w", ctx.Err())
	case err != nil:
		return nil, c.gone(base, err)
	case accepted.PromptID == "":
		return nil, fmt.Errorf("%w: ComfyUI accepted the workflow without a prompt_id", ErrJobFailed)
	}
	pid := accepted.PromptID
	log := c.log.With("job", req.JobID, "prompt_id", pid)
	log.Info("runner: workflow queued in ComfyUI")

	procDone := c.procDone(base)
	var (
		cancelled error
		deadline  <-chan time.Time
		poll      <-chan time.Time
		failure   error
		started   bool
	)
	ctxDone := ctx.Done()
	finish := func() error {
		if started {
			c.remember(base, req.Models)
		}
		return failure
	}
	for {
		select {
		case m := <-msgs:
			var d comfyData
			if json.Unmarshal(m.Data, &d) != nil || d.PromptID != pid {
				continue
			}
			switch m.Type {
			case "execution_start":
				started = true
			case "progress":
				if progress != nil && cancelled == nil {
					node := ""
					if d.Node != nil {
						node = *d.Node
					}
					progress(proto.Progress{Value: d.Value, Max: d.Max, Node: node})
				}
			case "execution_error":
				failure = execError(d)
				return nil, finish()
			case "execution_interrupted":
				if cancelled != nil {
					failure = cancelled
				} else {
					failure = fmt.Errorf("%w: the prompt was interrupted on the ComfyUI server at node %s (%s), not by hearth", ErrJobFailed, d.NodeID, d.NodeType)
				}
				// ComfyUI ends an interrupted prompt without a final message.
				if err := finish(); err != nil {
					return nil, err
				}
			case "executing":
				if d.Node == nil { // the prompt ended
					if err := finish(); err != nil {
						return nil, err
					}
					return c.fetchOutputs(ctx, base, pid, req.OutputDir)
				}
			case "execution_success":
				if err := finish(); err != nil {
					return nil, err
				}
				return c.fetchOutputs(ctx, base, pid, req.OutputDir)
			}
		case err := <-readErr:
			readErr = nil
			if gerr := c.gone(base, fmt.Errorf("the WebSocket broke: %w", err)); errors.Is(gerr, ErrWorkerExited) {
				if cancelled != nil {
					return nil, fmt.Errorf("%w; %w", cancelled, gerr)
				}
				return nil, gerr
			}
			log.Warn("runner: ComfyUI WebSocket broke but the server answers; following the prompt in its history", "err", err)
			t := time.NewTicker(comfyHistoryPoll)
			defer t.Stop()
			poll = t.C
		case <-poll:
			h, err := c.history(ctx, base, pid)
			if err != nil {
				return nil, c.gone(base, err)
			}
			if h == nil || (!h.Status.Completed && h.Status.StatusStr == "") {
				continue
			}
			started = true
			if h.Status.StatusStr == "error" {
				failure = cmpErr(cancelled, h.failure())
			}
			if err := finish(); err != nil {
				return nil, err
			}
			return c.fetchOutputs(ctx, base, pid, req.OutputDir)
		case <-procDone:
			err := c.gone(base, errors.New("the server exited"))
			if cancelled != nil {
				return nil, fmt.Errorf("%w; %w", cancelled, err)
			}
			return nil, err
		case <-ctxDone:
			ctxDone = nil
			cancelled = fmt.Errorf("cancelled: %w", ctx.Err())
			c.interrupt(base, pid)
			t := time.NewTimer(c.cfg.CancelTimeout)
			defer t.Stop()
			deadline = t.C
		case <-deadline:
			if c.cfg.URL != "" {
				return nil, fmt.Errorf("%w; the ComfyUI server at %s did not end the prompt within %s of the interrupt", cancelled, base, c.cfg.CancelTimeout)
			}
			c.mu.Lock()
			p := c.proc
			c.mu.Unlock()
			if p != nil && p.base == base {
				p.kill(fmt.Sprintf("it did not end prompt %s within %s of an interrupt", pid, c.cfg.CancelTimeout))
			}
			return nil, fmt.Errorf("%w; the ComfyUI server did not stop within %s, so it was killed", cancelled, c.cfg.CancelTimeout)
		case <-c.closing:
			return nil, ErrClosed
		}
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// interrupt stops the prompt whether it runs (POST /interrupt, which newer
// ComfyUI restricts to the prompt_id given and older ComfyUI applies to
// whatever runs, the same thing here: one prompt at a time) or still waits
// (POST /queue delete).
func (c *ComfyUI) interrupt(base, pid string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.post(ctx, base, "/queue", map[string]any{"delete": []string{pid}}, nil); err != nil {
		c.log.Warn("runner: could not drop the prompt from ComfyUI's queue", "prompt_id", pid, "err", err)
	}
	if err := c.post(ctx, base, "/interrupt", map[string]string{"prompt_id": pid}, nil); err != nil {
		c.log.Warn("runner: could not interrupt ComfyUI", "prompt_id", pid, "err", err)
	}
}

// history reads /history/{pid}; nil while the server has no entry yet.
func (c *ComfyUI) history(ctx context.Context, base, pid string) (*comfyHistory, error) {
	var all map[string]comfyHistory
	if err := c.get(ctx, base, "/history/"+url.PathEscape(pid), &all); err != nil {
		return nil, err
	}
	h, ok := all[pid]
	if !ok {
		return nil, nil
	}
	return &h, nil
}

// fetchOutputs downloads every output file the prompt's history lists,
// whatever its node put it under ("images", "gifs", "videos", "audio",
// ...), into dir, as subfolder/filename. Files of type "temp" (previews)
// and "input" are not outputs and are skipped.
func (c *ComfyUI) fetchOutputs(ctx context.Context, base, pid, dir string) ([]string, error) {
	// ComfyUI sends execution_success before it stores the history entry,
	// so a fast reader may have to look again.
	h, err := c.history(ctx, base, pid)
	for wait := 10 * time.Millisecond; err == nil && h == nil && wait < 3*time.Second; wait *= 2 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		h, err = c.history(ctx, base, pid)
	}
	if err == nil && h == nil {
		err = errors.New("the history has no entry for the prompt that just ended")
	}
	if err != nil {
		return nil, fmt.Errorf("read the prompt's history: %w", c.gone(base, err))
	}
	var out []string
	seen := map[string]bool{}
	for _, nodeID := range slices.Sorted(maps.Keys(h.Outputs)) {
		ui := h.Outputs[nodeID]
		for _, key := range slices.Sorted(maps.Keys(ui)) {
			var files []comfyOutputFile
			if json.Unmarshal(ui[key], &files) != nil {
				continue // "text", "animated" and other lists that are not files
			}
			for _, f := range files {
				if f.Filename == "" || (f.Type != "output" && f.Type != "") {
					continue
				}
				rel := path.Join(f.Subfolder, f.Filename)
				if !filepath.IsLocal(filepath.FromSlash(rel)) || strings.Contains(rel, "\\") {
					return nil, fmt.Errorf("%w: ComfyUI reported output %q, which is not a path inside the output directory", ErrJobFailed, rel)
				}
				if seen[rel] {
					continue
				}
				seen[rel] = true
				if err := c.download(ctx, base, f, filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
					return nil, fmt.Errorf("fetch output %s: %w", rel, c.gone(base, err))
				}
				out = append(out, rel)
				c.removeServerCopy(rel)
			}
		}
	}
	return out, nil
}

// download fetches one file with /view into dst.
func (c *ComfyUI) download(ctx context.Context, base string, f comfyOutputFile, dst string) error {
	q := url.Values{"filename": {f.Filename}, "subfolder": {f.Subfolder}, "type": {cmp.Or(f.Type, "output")}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/view?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return &httpStatusError{status: resp.StatusCode, body: b}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".fetch-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, io.LimitReader(resp.Body, comfyMaxOutput+1))
	if err == nil && n > comfyMaxOutput {
		err = fmt.Errorf("larger than %d bytes", int64(comfyMaxOutput))
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// removeServerCopy deletes a fetched output from a managed server's output
// directory, so a long-lived server does not fill the disk.
func (c *ComfyUI) removeServerCopy(rel string) {
	if c.cfg.URL != "" || c.cfg.OutputDir == "" {
		return
	}
	p := filepath.Join(c.cfg.OutputDir, filepath.FromSlash(rel))
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("runner: could not remove a fetched output from ComfyUI's output directory", "path", p, "err", err)
	}
}

// describePromptError turns ComfyUI's 400 answer to /prompt, {"error":
// {"type", "message", "details"}, "node_errors": {id: {"class_type",
// "errors": [{"message", "details"}]}}}, into one line.
func describePromptError(body []byte) string {
	var e struct {
		Error struct {
			Type    string `json:"type"`
			Message string `json:"message"`
			Details string `json:"details"`
		} `json:"error"`
		NodeErrors map[string]struct {
			ClassType string `json:"class_type"`
			Errors    []struct {
				Message string `json:"message"`
				Details string `json:"details"`
			} `json:"errors"`
		} `json:"node_errors"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
		return truncate(body, 500)
	}
	parts := []string{e.Error.Message}
	if e.Error.Details != "" {
		parts[0] += " (" + e.Error.Details + ")"
	}
	for _, id := range slices.Sorted(maps.Keys(e.NodeErrors)) {
		ne := e.NodeErrors[id]
		for _, x := range ne.Errors {
			parts = append(parts, fmt.Sprintf("node %s (%s): %s: %s", id, ne.ClassType, x.Message, x.Details))
		}
	}
	return strings.Join(parts, "; ")
}
