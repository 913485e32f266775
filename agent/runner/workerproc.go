package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

const (
	// workerWaitDelay bounds the wait for a dead worker's pipes to close.
	workerWaitDelay = 2 * time.Second
	// progressBuffer is how many progress events may queue for a slow
	// callback before newer ones are dropped; progress is a gauge, not a log.
	progressBuffer = 64
)

// workerProc is one running worker process and the client side of its
// protocol. Its stdout goroutine (os/exec's copier, through lineWriter)
// demultiplexes answers by id to the calls waiting for them. Errors it
// returns carry no package prefix; Worker adds it with the call's context.
type workerProc struct {
	*child
	stdin io.WriteCloser

	stdout, stderr *lineWriter
	hello          chan workerMsg

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  int64
	pending map[int64]*pendingCall
}

type pendingCall struct {
	progress chan proto.Progress
	final    chan workerMsg
}

// startProc starts the worker and waits for its hello.
func startProc(ctx context.Context, cfg WorkerConfig, log *slog.Logger) (*workerProc, error) {
	cmd := exec.Command(cfg.Command[0], cfg.Command[1:]...)
	cmd.Env = append(os.Environ(), cfg.Env...)
	cmd.Dir = cfg.Dir
	p := &workerProc{
		child:   newChild("worker", log, cmd),
		hello:   make(chan workerMsg, 1),
		pending: make(map[int64]*pendingCall),
	}
	p.flush = func() { p.stderr.Flush() }
	p.stdout = &lineWriter{max: maxLine, fn: p.handleLine, overlong: func() {
		p.kill("it wrote a protocol line longer than 16 MiB")
	}}
	p.stderr = &lineWriter{max: maxLine, fn: p.handleStderr}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	p.stdin = stdin
	if err := p.start(); err != nil {
		return nil, fmt.Errorf("start worker %q: %w", cfg.Command[0], err)
	}

	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case h := <-p.hello:
		if h.Protocol != ProtocolVersion {
			p.shutdown(0)
			return nil, fmt.Errorf("worker %q speaks protocol %d; this agent speaks %d", h.Name, h.Protocol, ProtocolVersion)
		}
		p.log.Info("runner: worker ready", "pid", p.pid(), "name", h.Name, "command", cfg.Command[0])
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("worker %q ended before its hello: %w", cfg.Command[0], p.exitError())
	case <-timer.C:
		p.kill("no hello in time")
		<-p.done
		return nil, fmt.Errorf("worker %q sent no hello within %s; killed it%s", cfg.Command[0], cfg.StartTimeout, quoteTail(p.tail.String()))
	case <-ctx.Done():
		p.kill("start cancelled")
		<-p.done
		return nil, fmt.Errorf("start worker %q: %w", cfg.Command[0], ctx.Err())
	}
}

func (p *workerProc) handleStderr(line []byte) {
	p.tail.AddLine(line)
	p.log.Info("runner: worker stderr", "pid", p.pid(), "line", string(line))
}

// handleLine routes one stdout line. It runs on os/exec's copy goroutine,
// so it never blocks: finals have a one-slot buffer, progress is dropped
// when its buffer is full.
func (p *workerProc) handleLine(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var m workerMsg
	if err := json.Unmarshal(line, &m); err != nil {
		p.log.Warn("runner: worker wrote a line on stdout that is not a protocol message; keep stdout for the protocol", "line", truncate(line, 200))
		return
	}
	if m.Event == eventHello {
		select {
		case p.hello <- m:
		default:
			p.log.Warn("runner: worker sent a second hello; ignored")
		}
		return
	}
	p.mu.Lock()
	pc := p.pending[m.ID]
	if pc != nil && m.OK != nil {
		delete(p.pending, m.ID)
	}
	p.mu.Unlock()
	switch {
	case pc == nil:
		p.log.Debug("runner: worker message for no pending request", "id", m.ID, "event", m.Event)
	case m.OK != nil:
		pc.final <- m
	case m.Event == eventProgress:
		select {
		case pc.progress <- proto.Progress{Value: m.Value, Max: m.Max, Node: m.Node}:
		default:
		}
	default:
		p.log.Debug("runner: worker sent an unknown event; ignored", "id", m.ID, "event", m.Event)
	}
}

// call sends the request build makes for a fresh id and waits for its final
// answer, passing progress events to onProgress on the caller's goroutine.
//
// When ctx ends, call sends a cancel and keeps waiting up to cancelTimeout
// for the final answer, then kills the process. The answer is returned
// whenever one came, also with an error, so the caller can record what a
// cancelled load did load.
func (p *workerProc) call(ctx context.Context, cancelTimeout time.Duration, build func(id int64) any, onProgress func(proto.Progress)) (*workerMsg, error) {
	pc := &pendingCall{progress: make(chan proto.Progress, progressBuffer), final: make(chan workerMsg, 1)}
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	p.pending[id] = pc
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, id)
		p.mu.Unlock()
	}()
	if err := p.send(build(id)); err != nil {
		return nil, err
	}

	ctxDone := ctx.Done()
	var cancelled error
	var deadline <-chan time.Time
	finish := func(m workerMsg) (*workerMsg, error) {
		for {
			select {
			case pr := <-pc.progress:
				if onProgress != nil {
					onProgress(pr)
				}
			default:
				return &m, cancelled
			}
		}
	}
	for {
		select {
		case pr := <-pc.progress:
			if onProgress != nil {
				onProgress(pr)
			}
		case m := <-pc.final:
			return finish(m)
		case <-p.done:
			select { // the answer may have raced the exit
			case m := <-pc.final:
				return finish(m)
			default:
			}
			if cancelled != nil {
				return nil, fmt.Errorf("%w; %w", cancelled, p.exitError())
			}
			return nil, p.exitError()
		case <-ctxDone:
			ctxDone = nil
			cancelled = fmt.Errorf("cancelled: %w", ctx.Err())
			p.sendCancel(id)
			t := time.NewTimer(cancelTimeout)
			defer t.Stop()
			deadline = t.C
		case <-deadline:
			p.kill(fmt.Sprintf("it did not end request %d within %s of a cancel", id, cancelTimeout))
			return nil, fmt.Errorf("%w; the worker did not stop within %s, so it was killed", cancelled, cancelTimeout)
		}
	}
}

// sendCancel asks the worker to stop request target. Its own answer is not
// waited for: what matters is the target's.
func (p *workerProc) sendCancel(target int64) {
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	p.mu.Unlock()
	if err := p.send(cancelRequest{ID: id, Op: opCancel, Target: target}); err != nil {
		p.log.Warn("runner: could not send cancel to worker", "target", target, "err", err)
	}
}

// send writes one request line.
func (p *workerProc) send(req any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // prompts reach the worker as the user wrote them
	if err := enc.Encode(req); err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	if buf.Len() > maxLine {
		return fmt.Errorf("request is %d bytes, over the protocol's 16 MiB line limit", buf.Len())
	}
	p.writeMu.Lock()
	_, err := p.stdin.Write(buf.Bytes())
	p.writeMu.Unlock()
	if err == nil {
		return nil
	}
	// A write fails when the worker is gone; say why it went if we can.
	select {
	case <-p.done:
		return p.exitError()
	case <-time.After(time.Second):
		return fmt.Errorf("write to worker: %w", err)
	}
}

// shutdown closes stdin, which asks the worker to exit, and kills it if it
// has not within grace. It returns once the process is reaped.
func (p *workerProc) shutdown(grace time.Duration) {
	p.markStopping()
	_ = p.stdin.Close()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	p.kill("runner closed")
	<-p.done
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
