package runner

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// ComfyUI placeholders in ComfyUIConfig.Command, replaced at every start.
const (
	PlaceholderHost            = "{host}"
	PlaceholderPort            = "{port}"
	PlaceholderGPU             = "{gpu}"
	PlaceholderExtraModelPaths = "{extra_model_paths}"
	PlaceholderOutputDir       = "{output_dir}"
)

// DefaultComfyUICommand is how a ComfyUI checkout is started from its
// directory (ComfyUIConfig.Dir).
var DefaultComfyUICommand = []string{"python3", "main.py", "--listen", PlaceholderHost, "--port", PlaceholderPort,
	"--cuda-device", PlaceholderGPU, "--extra-model-paths-config", PlaceholderExtraModelPaths,
	"--output-directory", PlaceholderOutputDir, "--disable-auto-launch"}

// comfyStartPoll is how often a starting server is asked whether it is up.
const comfyStartPoll = 50 * time.Millisecond

// ComfyUIConfig configures a ComfyUI runner: either a server it starts and
// supervises (Command) or one it attaches to (URL).
type ComfyUIConfig struct {
	// URL attaches to a running server (http://host:port); nothing is
	// started, and a server that stops answering fails the job in flight
	// with ErrWorkerExited until it answers again.
	URL string
	// Command starts the server; no shell is involved. The placeholders
	// {host}, {port}, {gpu}, {extra_model_paths} and {output_dir} are
	// replaced in every argument. The port is a free one chosen at each start
	// unless Port is set.
	Command []string
	Env     []string
	Dir     string
	Host    string // default 127.0.0.1
	Port    int
	// GPU is the device index: {gpu}, and CUDA_VISIBLE_DEVICES in the
	// server's environment.
	GPU int
	// ExtraModelPaths is the extra_model_paths.yaml the server reads (the
	// agent writes it beside its named views); OutputDir is its output
	// directory. Outputs fetched for a job are removed from OutputDir.
	ExtraModelPaths string
	OutputDir       string
	// CapacityBytes is the VRAM the slot gives the server. ComfyUI can only
	// unload everything at once, so when a job's models would not fit beside
	// what the server holds, the runner asks it to /free first. 0: no limit.
	CapacityBytes int64
	// StartTimeout bounds a start until the server answers (default 120 s:
	// ComfyUI imports torch and its custom nodes first). CancelTimeout is how
	// long an interrupted prompt may take to end before the server is
	// killed (default 10 s; attach mode gives up instead).
	StartTimeout  time.Duration
	CancelTimeout time.Duration
	HTTPClient    *http.Client
	Logger        *slog.Logger
}

// DefaultComfyUIStartTimeout is ComfyUIConfig.StartTimeout's default.
const DefaultComfyUIStartTimeout = 120 * time.Second

// ComfyUI is the runner for one ComfyUI server: it submits a job's workflow
// with POST /prompt, follows it on /ws, and fetches its outputs. ComfyUI
// does not say which models it holds, so the runner keeps the record itself
// from the models of the jobs it ran: the vram tier the agent reports. The
// record is cleared when the server is told to /free or restarts.
type ComfyUI struct {
	cfg      ComfyUIConfig
	log      *slog.Logger
	http     *http.Client
	clientID string

	// callMu makes Load and Run take turns: a server runs one prompt at a
	// time, and /free only acts between prompts.
	callMu sync.Mutex

	mu       sync.Mutex
	proc     *comfyProc // managed mode; nil between a death and the restart
	attached bool       // attach mode: whether the server answered last time
	resident map[proto.Digest]*residentEntry
	useSeq   uint64
	failures int
	retryAt  time.Time
	closed   bool
	closing  chan struct{}
}

var _ Runner = (*ComfyUI)(nil)

// NewComfyUI starts (or, with URL, reaches) the server and waits until it
// answers.
func NewComfyUI(cfg ComfyUIConfig) (*ComfyUI, error) {
	if cfg.URL == "" && (len(cfg.Command) == 0 || cfg.Command[0] == "") {
		return nil, errors.New("runner: comfyui config needs a command to start the server, or the URL of a running one")
	}
	if cfg.URL != "" {
		u, err := url.Parse(cfg.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("runner: comfyui URL %q must be http(s)://host:port", cfg.URL)
		}
		cfg.URL = strings.TrimSuffix(cfg.URL, "/")
	}
	if cfg.CapacityBytes < 0 {
		return nil, fmt.Errorf("runner: comfyui capacity %d must not be negative", cfg.CapacityBytes)
	}
	cfg.Host = cmp.Or(cfg.Host, "127.0.0.1")
	cfg.StartTimeout = cmp.Or(cfg.StartTimeout, DefaultComfyUIStartTimeout)
	cfg.CancelTimeout = cmp.Or(cfg.CancelTimeout, DefaultCancelTimeout)
	cfg.Command, cfg.Env = slices.Clone(cfg.Command), slices.Clone(cfg.Env)
	var id [16]byte
	_, _ = rand.Read(id[:])
	c := &ComfyUI{
		cfg: cfg, log: orDiscard(cfg.Logger), http: cfg.HTTPClient, clientID: "hearth-" + hex.EncodeToString(id[:]),
		resident: make(map[proto.Digest]*residentEntry), closing: make(chan struct{}),
	}
	if c.http == nil {
		c.http = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}}
	}
	if _, err := c.ensureServer(context.Background()); err != nil {
		return nil, fmt.Errorf("runner: %w", err)
	}
	return c, nil
}

// PID returns the managed server's process id, or 0 while none runs (and
// always in attach mode).
func (c *ComfyUI) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil || c.proc.exited() {
		return 0
	}
	return c.proc.pid()
}

// URL returns the server's base URL now ("" while a managed one is down).
func (c *ComfyUI) URL() string {
	if c.cfg.URL != "" {
		return c.cfg.URL
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return ""
	}
	return c.proc.base
}

// Load makes sure the server runs and that models fit beside what it
// holds, freeing it when they do not. ComfyUI loads models itself while it
// runs the prompt, so nothing more happens before Run.
func (c *ComfyUI) Load(ctx context.Context, models []Model) ([]proto.Digest, error) {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	already, _, err := c.load(ctx, models)
	if err != nil {
		return already, fmt.Errorf("runner: comfyui load: %w", c.explain(err))
	}
	return already, nil
}

func (c *ComfyUI) load(ctx context.Context, models []Model) ([]proto.Digest, string, error) {
	models, err := validateModels(models)
	if err != nil {
		return nil, "", err
	}
	need := sumSizes(models)
	if cp := c.cfg.CapacityBytes; cp > 0 && need > cp {
		return nil, "", fmt.Errorf("%w: the models need %d bytes, the ComfyUI server has %d; place the job on a larger slot group", ErrTooLarge, need, cp)
	}
	base, err := c.ensureServer(ctx)
	if err != nil {
		return nil, "", err
	}
	c.mu.Lock()
	var already []proto.Digest
	var used, missing int64
	for _, m := range models {
		if _, ok := c.resident[m.Digest]; ok {
			already = append(already, m.Digest)
		} else {
			missing += m.Size
		}
	}
	for _, e := range c.resident {
		used += e.Size
	}
	c.mu.Unlock()
	if cp := c.cfg.CapacityBytes; cp > 0 && used+missing > cp {
		c.log.Info("runner: comfyui: freeing the server's models to make room", "held_bytes", used, "needed_bytes", missing)
		if err := c.free(ctx, base); err != nil {
			return nil, base, err
		}
		already = nil
	}
	return already, base, nil
}

// Free asks the server to unload every model and free its memory
// (POST /free), and forgets what it held.
func (c *ComfyUI) Free(ctx context.Context) error {
	c.callMu.Lock()
	defer c.callMu.Unlock()
	base, err := c.ensureServer(ctx)
	if err != nil {
		return fmt.Errorf("runner: comfyui free: %w", c.explain(err))
	}
	if err := c.free(ctx, base); err != nil {
		return fmt.Errorf("runner: comfyui free: %w", err)
	}
	return nil
}

func (c *ComfyUI) free(ctx context.Context, base string) error {
	if err := c.post(ctx, base, "/free", map[string]bool{"unload_models": true, "free_memory": true}, nil); err != nil {
		return err
	}
	c.mu.Lock()
	clear(c.resident)
	c.mu.Unlock()
	return nil
}

// Resident lists the models the server holds by the runner's record, most
// recently used first. A server that died or stopped answering holds none.
func (c *ComfyUI) Resident() []ResidentModel {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reapLocked()
	es := make([]*residentEntry, 0, len(c.resident))
	for _, e := range c.resident {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *residentEntry) int { return cmp.Compare(b.seq, a.seq) })
	out := make([]ResidentModel, 0, len(es))
	for _, e := range es {
		out = append(out, e.ResidentModel)
	}
	return out
}

// remember records that a prompt ran with models loaded.
func (c *ComfyUI) remember(base string, models []Model) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.currentBaseLocked() != base {
		return // the server restarted meanwhile: it holds nothing
	}
	now := time.Now()
	for _, m := range models {
		e, ok := c.resident[m.Digest]
		if !ok {
			e = &residentEntry{ResidentModel: ResidentModel{Digest: m.Digest, Name: m.Name, Size: m.Size}}
			c.resident[m.Digest] = e
		}
		c.useSeq++
		e.seq, e.LastUsed = c.useSeq, now
	}
}

func (c *ComfyUI) currentBaseLocked() string {
	if c.cfg.URL != "" {
		return c.cfg.URL
	}
	if c.proc == nil || c.proc.exited() {
		return ""
	}
	return c.proc.base
}

// Close stops a managed server (attach mode leaves it running). A call in
// flight fails with ErrClosed.
func (c *ComfyUI) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
	p := c.proc
	c.proc = nil
	clear(c.resident)
	c.mu.Unlock()
	if p != nil {
		p.stop()
	}
	c.http.CloseIdleConnections()
	return nil
}

func (c *ComfyUI) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

func (c *ComfyUI) explain(err error) error { return explainClosed(c.isClosed(), err) }

// reapLocked notices a managed server that died: its models are gone and
// the next start waits out the backoff.
func (c *ComfyUI) reapLocked() {
	p := c.proc
	if p == nil || !p.exited() {
		return
	}
	c.proc = nil
	clear(c.resident)
	c.failures++
	c.retryAt = p.diedAt().Add(backoffDelay(c.failures))
}

// ensureServer returns the base URL of a server that answers, starting (or
// restarting, after the backoff) a managed one.
func (c *ComfyUI) ensureServer(ctx context.Context) (string, error) {
	if c.cfg.URL != "" {
		return c.cfg.URL, c.checkAttached(ctx)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return "", ErrClosed
	}
	c.reapLocked()
	if c.proc != nil {
		base := c.proc.base
		c.mu.Unlock()
		return base, nil
	}
	wait := time.Until(c.retryAt)
	c.mu.Unlock()
	if wait > 0 {
		c.log.Info("runner: waiting before restarting the ComfyUI server", "wait", wait)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting to restart the ComfyUI server: %w", ctx.Err())
		case <-c.closing:
			return "", ErrClosed
		}
	}
	p, err := c.start(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.failures++
		c.retryAt = time.Now().Add(backoffDelay(c.failures))
		return "", err
	}
	if c.closed {
		go p.stop()
		return "", ErrClosed
	}
	c.proc = p
	clear(c.resident)
	return p.base, nil
}

// checkAttached asks an attached server whether it is up. One that stopped
// answering has lost what it held, as far as the runner can tell.
func (c *ComfyUI) checkAttached(ctx context.Context) error {
	err := c.ping(ctx, c.cfg.URL)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if err != nil {
		c.attached = false
		clear(c.resident)
		return fmt.Errorf("%w: the ComfyUI server at %s does not answer: %w", ErrWorkerExited, c.cfg.URL, err)
	}
	c.attached = true
	return nil
}

// ping is GET /system_stats, the cheapest route that proves the server is up.
func (c *ComfyUI) ping(ctx context.Context, base string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.get(ctx, base, "/system_stats", nil)
}

// get fetches path and decodes a JSON answer into out (nil: discard).
func (c *ComfyUI) get(ctx context.Context, base, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, out)
}

// post sends body as JSON and decodes a JSON answer into out (nil: discard).
func (c *ComfyUI) post(ctx context.Context, base, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return c.do(req, out)
}

// httpStatusError is an answer other than 200, with its body.
type httpStatusError struct {
	status int
	body   []byte
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.status, truncate(bytes.TrimSpace(e.body), 500))
}

func (c *ComfyUI) do(req *http.Request, out any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, &httpStatusError{status: resp.StatusCode, body: b})
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// comfyProc is one managed server process.
type comfyProc struct {
	*child
	base string
	out  *lineWriter
}

// start launches the server and waits until it answers.
func (c *ComfyUI) start(ctx context.Context) (*comfyProc, error) {
	port := c.cfg.Port
	if port == 0 {
		var err error
		if port, err = freePort(c.cfg.Host); err != nil {
			return nil, err
		}
	}
	r := strings.NewReplacer(PlaceholderHost, c.cfg.Host, PlaceholderPort, strconv.Itoa(port),
		PlaceholderGPU, strconv.Itoa(c.cfg.GPU), PlaceholderExtraModelPaths, c.cfg.ExtraModelPaths,
		PlaceholderOutputDir, c.cfg.OutputDir)
	args := make([]string, len(c.cfg.Command))
	for i, a := range c.cfg.Command {
		args[i] = r.Replace(a)
	}
	if c.cfg.OutputDir != "" {
		if err := os.MkdirAll(c.cfg.OutputDir, 0o750); err != nil {
			return nil, fmt.Errorf("ComfyUI output directory: %w", err)
		}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "CUDA_VISIBLE_DEVICES="+strconv.Itoa(c.cfg.GPU))
	cmd.Env = append(cmd.Env, c.cfg.Env...)
	cmd.Dir = c.cfg.Dir
	p := &comfyProc{child: newChild("ComfyUI server", c.log, cmd), base: "http://" + net.JoinHostPort(c.cfg.Host, strconv.Itoa(port))}
	p.out = &lineWriter{max: maxLine, fn: func(line []byte) {
		p.tail.AddLine(line)
		p.log.Info("runner: comfyui output", "line", string(line))
	}}
	p.flush = func() { p.out.Flush() }
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := p.start(); err != nil {
		return nil, fmt.Errorf("start ComfyUI %q: %w", args[0], err)
	}
	deadline := time.NewTimer(c.cfg.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(comfyStartPoll)
	defer tick.Stop()
	for {
		if c.ping(ctx, p.base) == nil {
			c.log.Info("runner: ComfyUI server ready", "pid", cmd.Process.Pid, "url", p.base)
			return p, nil
		}
		select {
		case <-tick.C:
		case <-p.done:
			return nil, fmt.Errorf("ComfyUI server %q ended before it answered: %w", args[0], p.exitError())
		case <-deadline.C:
			p.kill("it did not answer in time")
			<-p.done
			return nil, fmt.Errorf("ComfyUI server %q did not answer on %s within %s; killed it%s", args[0], p.base, c.cfg.StartTimeout, quoteTail(p.tail.String()))
		case <-ctx.Done():
			p.kill("start cancelled")
			<-p.done
			return nil, fmt.Errorf("start ComfyUI: %w", ctx.Err())
		case <-c.closing:
			p.kill("runner closed")
			<-p.done
			return nil, ErrClosed
		}
	}
}

// stop kills the server's process group and waits for it: ComfyUI keeps
// nothing that a clean exit would save.
func (p *comfyProc) stop() {
	p.markStopping()
	p.kill("runner closed")
	<-p.done
}

// freePort asks the kernel for a free TCP port on host. Another process
// could take it before the server binds it; the start then fails and the
// next one picks another.
func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port for ComfyUI: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
