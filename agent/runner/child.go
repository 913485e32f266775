package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"time"
)

// child is a process a runner supervises (a worker, a ComfyUI server): it
// runs in a process group of its own, the tail of its output is kept for
// errors, and how it ended, and why the agent killed it if it did, is
// remembered for the restart's backoff and for the job's error.
type child struct {
	what  string // "worker", "ComfyUI server": names it in logs and errors
	log   *slog.Logger
	cmd   *exec.Cmd // cmd.Process is set before os/exec starts its copiers
	tail  *tailBuffer
	flush func() // flushes the output's line writers once the process is reaped
	done  chan struct{}

	stateMu  sync.Mutex
	killWhy  string
	stopping bool // ended on purpose: its exit is not worth a warning
	exitErr  error
	exitedAt time.Time
}

// childTail is how much of a dead child's output its error quotes.
const childTail = 4 << 10

func newChild(what string, log *slog.Logger, cmd *exec.Cmd) *child {
	ownGroup(cmd)
	cmd.WaitDelay = workerWaitDelay
	return &child{what: what, log: log, cmd: cmd, tail: &tailBuffer{max: childTail}, flush: func() {}, done: make(chan struct{})}
}

// start starts the process and reaps it in the background.
func (c *child) start() error {
	if err := c.cmd.Start(); err != nil {
		return err
	}
	go c.wait()
	return nil
}

// wait reaps the process; closing done fails every call still waiting on it.
func (c *child) wait() {
	err := c.cmd.Wait()
	c.flush()
	c.stateMu.Lock()
	c.exitErr, c.exitedAt = err, time.Now()
	stopping, why := c.stopping, c.killWhy
	c.stateMu.Unlock()
	// Log before done: once done is closed, the owner may consider the
	// process (and its logger) finished.
	if !stopping {
		c.log.Warn("runner: "+c.what+" exited", "pid", c.pid(), "err", err, "killed_because", why, "output_tail", c.tail.String())
	}
	close(c.done)
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// diedAt is when the process was reaped; call it only after done.
func (c *child) diedAt() time.Time {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.exitedAt
}

// exitError describes the process's end; call it only after done.
func (c *child) exitError() error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	how := fmt.Sprint(c.exitErr)
	if c.exitErr == nil {
		how = "exit status 0"
	}
	if c.killWhy != "" {
		how += " (the agent killed it: " + c.killWhy + ")"
	}
	return fmt.Errorf("%w: %s pid %d, %s%s", ErrWorkerExited, c.what, c.pid(), how, quoteTail(c.tail.String()))
}

// kill ends the whole process group; the first reason goes into later
// errors.
func (c *child) kill(why string) {
	c.stateMu.Lock()
	if c.killWhy == "" {
		c.killWhy = why
	}
	c.stateMu.Unlock()
	if err := killGroup(c.cmd.Process); err != nil && !errors.Is(err, os.ErrProcessDone) {
		c.log.Warn("runner: kill "+c.what, "err", err)
	}
}

// markStopping says the coming end is on purpose.
func (c *child) markStopping() {
	c.stateMu.Lock()
	c.stopping = true
	c.stateMu.Unlock()
}
