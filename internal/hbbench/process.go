package hbbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// coordProc is the coordinator process under test.
type coordProc struct {
	cmd    *exec.Cmd
	url    string
	dir    string
	logf   string // its stdout and stderr
	exited chan struct{}
	err    error // its exit, once exited is closed
	once   sync.Once
}

// startCoordinator starts cfg.Command as a one-node coordinator on free
// loopback ports with its Raft log in a temporary directory, and returns
// once it answers /readyz. The child gets this process's environment less
// any HEARTH_ variable, so a config meant for a real node cannot reach it.
func startCoordinator(ctx context.Context, cfg *Config) (*coordProc, error) {
	dir, err := os.MkdirTemp("", "hearth-hbbench-")
	if err != nil {
		return nil, err
	}
	httpAddr, err1 := freeAddr()
	raftAddr, err2 := freeAddr()
	if err := errors.Join(err1, err2); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	args := append(slices.Clone(cfg.Command[1:]),
		"--data-dir", filepath.Join(dir, "data"), "--http-addr", httpAddr, "--raft-addr", raftAddr,
		"--bootstrap", "--log-level", "warn")
	args = append(args, cfg.CoordinatorArgs...)
	c := &coordProc{url: "http://" + httpAddr, dir: dir, logf: filepath.Join(dir, "coordinator.log"), exited: make(chan struct{})}
	out, err := os.Create(c.logf)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer out.Close()
	c.cmd = exec.Command(cfg.Command[0], args...)
	c.cmd.Stdout, c.cmd.Stderr = out, out
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HEARTH_") {
			c.cmd.Env = append(c.cmd.Env, kv)
		}
	}
	c.cmd.SysProcAttr = childAttrs()
	if err := c.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start coordinator %q: %w", cfg.Command, err)
	}
	go func() {
		c.err = c.cmd.Wait()
		close(c.exited)
	}()
	if err := c.waitReady(ctx, time.Minute); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (c *coordProc) pid() int { return c.cmd.Process.Pid }

// waitReady polls /readyz until the node leads and has caught up.
func (c *coordProc) waitReady(ctx context.Context, limit time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	for {
		if err := c.alive(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/readyz", nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the coordinator did not become ready within %s; its log ends:\n%s", limit, c.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// alive reports an error if the coordinator has exited.
func (c *coordProc) alive() error {
	select {
	case <-c.exited:
		return fmt.Errorf("the coordinator exited (%v); its log ends:\n%s", c.err, c.logTail())
	default:
		return nil
	}
}

func (c *coordProc) logTail() string {
	b, _ := os.ReadFile(c.logf)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(bytes.TrimSpace(b))
}

// stop sends SIGTERM, waits up to 10 s, kills the process if it is still
// there, and removes its directory. Only the first call does anything.
func (c *coordProc) stop() {
	c.once.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
		os.RemoveAll(c.dir)
	})
}

// cpu returns the coordinator's CPU time so far, user plus system.
func (c *coordProc) cpu() (time.Duration, error) { return procCPU(c.pid()) }

// rss returns the coordinator's resident memory, or 0 if unknown.
func (c *coordProc) rss() int64 { return procRSS(c.pid()) }
