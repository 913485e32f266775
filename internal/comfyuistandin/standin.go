// Package comfyuistandin is a stand-in for a ComfyUI server, used by the
// comfyui runner's tests and by `hearth demo --runner comfyui`. ComfyUI
// cannot be installed on the machines hearth is built and tested on (it needs
// Python, PyTorch and a GPU), so this package implements the part of its API
// that hearth drives, as ComfyUI's server.py and execution.py define it:
//
//   - POST /prompt {"prompt": {...}, "client_id": "..."} answers
//     {"prompt_id", "number", "node_errors"}; a prompt that names a model
//     file not in its model folders, has no output node, or is not an
//     API-format prompt is refused with 400 and ComfyUI's {"error", "node_errors"}.
//   - GET /ws?clientId=ID is the WebSocket that receives, as JSON text
//     messages {"type", "data"}, "status" (on connect and on queue changes),
//     and for each prompt of that client "execution_start",
//     "execution_cached", "executing" (one per node, then node null),
//     "progress" (value/max per sampler step), "executed" (a node's
//     output), and one of "execution_success", "execution_error" or
//     "execution_interrupted".
//   - GET /history/{prompt_id} answers {prompt_id: {"prompt", "outputs",
//     "status", "meta"}}, or {} for a prompt it does not know.
//   - GET /view?filename=&subfolder=&type= serves an output (or temp) file.
//   - POST /interrupt (optionally {"prompt_id"}) stops the running prompt
//     between steps; POST /queue {"delete": [...]} drops pending ones;
//     POST /free {"unload_models": true, "free_memory": true} unloads every
//     model, between prompts as ComfyUI does.
//   - GET /system_stats and GET /queue, which clients use as health checks.
//
// Loader nodes (CheckpointLoaderSimple, LoraLoader, VAELoader, UNETLoader,
// CLIPLoader, ControlNetLoader, UpscaleModelLoader, ...) really open the
// file they name, looked up in the model folders of the
// extra_model_paths.yaml it was started with, and read and hash all of it:
// that read is the "load", and a loaded model stays held until /free or
// the end of the process, so a repeated prompt finds it loaded (its loader
// node is reported in execution_cached). Samplers (any class_type ending in
// "Sampler" or "SamplerAdvanced") report progress per step. Output nodes
// write real files into the output directory: SaveImage a PNG
// ("images"), SaveVideo and VHS_VideoCombine an MP4 container ("videos",
// "gifs"), SaveAudio a WAV ("audio"), PreviewImage a PNG of type "temp".
// The pictures are derived from the prompt and the digests of the models
// it loaded, so they are deterministic. Nothing is computed with the
// weights: this is a double of ComfyUI's API, not of its models.
//
// Two node types exist only here, for fault tests: StandinCrash ends the
// process (exit status 70) when it executes (with input "once" naming a
// file, only when it creates that file: the first time), and StandinFail
// raises an execution_error. GET /standin/loaded, also stand-in only, lists the models
// it holds, so a test can check that /free unloaded them.
//
// The stand-in runs in-process (Start) or as its own process, taking
// ComfyUI's own flags (--listen, --port, --extra-model-paths-config,
// --output-directory, --cuda-device): `hearth comfyui-standin`, or a test
// binary that calls ServeIfTestChild.
package comfyuistandin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Config configures a stand-in server.
type Config struct {
	// Addr is the listen address; default 127.0.0.1:0 (a free port).
	Addr string
	// ExtraModelPaths is an extra_model_paths.yaml naming the model folders.
	ExtraModelPaths string
	// ModelsDir, if set, is a models/ tree (models/checkpoints, ...) searched
	// too, as ComfyUI searches its own models directory.
	ModelsDir string
	// OutputDir receives outputs (default: a temp directory); temp outputs
	// go to OutputDir/../temp.
	OutputDir string
	// StepDelay is the pause before each sampler step; Steps caps a
	// sampler's steps (default 4) so tests need not run 20 of them.
	StepDelay time.Duration
	Steps     int
	// CUDADevice is reported by /system_stats, as ComfyUI reports its device.
	CUDADevice string
	Logger     *slog.Logger
	// Exit ends the process for StandinCrash (default os.Exit).
	Exit func(code int)
}

// Server is a running stand-in.
type Server struct {
	cfg     Config
	log     *slog.Logger
	folders map[string][]string
	tempDir string
	ln      net.Listener
	http    *http.Server

	mu        sync.Mutex
	sockets   map[string]*websocket.Conn // by client id
	queue     []*prompt
	running   *prompt
	history   map[string]json.RawMessage
	loaded    map[string]loadedModel // by folder/file
	nodeCache map[string]string      // node key → digest of what it loaded, the execution cache
	number    int
	freeAsked bool
	wake      chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type loadedModel struct {
	Path   string `json:"path"`
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Start listens and serves until Close.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Steps <= 0 {
		cfg.Steps = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Exit == nil {
		cfg.Exit = os.Exit
	}
	if cfg.OutputDir == "" {
		d, err := os.MkdirTemp("", "comfyui-standin-")
		if err != nil {
			return nil, fmt.Errorf("comfyuistandin: %w", err)
		}
		cfg.OutputDir = filepath.Join(d, "output")
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, folders: map[string][]string{},
		tempDir: filepath.Join(filepath.Dir(cfg.OutputDir), "temp"),
		sockets: map[string]*websocket.Conn{}, history: map[string]json.RawMessage{},
		loaded: map[string]loadedModel{}, nodeCache: map[string]string{}, wake: make(chan struct{}, 1),
	}
	for _, d := range []string{cfg.OutputDir, s.tempDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("comfyuistandin: %w", err)
		}
	}
	if cfg.ExtraModelPaths != "" {
		b, err := os.ReadFile(cfg.ExtraModelPaths)
		if err != nil {
			return nil, fmt.Errorf("comfyuistandin: extra model paths: %w", err)
		}
		if err := parseExtraModelPaths(b, s.folders); err != nil {
			return nil, fmt.Errorf("comfyuistandin: %s: %w", cfg.ExtraModelPaths, err)
		}
	}
	if cfg.ModelsDir != "" {
		entries, _ := os.ReadDir(cfg.ModelsDir)
		for _, e := range entries {
			if e.IsDir() {
				s.folders[e.Name()] = append(s.folders[e.Name()], filepath.Join(cfg.ModelsDir, e.Name()))
			}
		}
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("comfyuistandin: listen: %w", err)
	}
	s.ln = ln
	mux := http.NewServeMux()
	mux.HandleFunc("POST /prompt", s.handlePrompt)
	mux.HandleFunc("GET /prompt", s.handleQueueInfo)
	mux.HandleFunc("GET /queue", s.handleQueue)
	mux.HandleFunc("POST /queue", s.handleQueueEdit)
	mux.HandleFunc("GET /ws", s.handleWS)
	mux.HandleFunc("GET /history/{id}", s.handleHistory)
	mux.HandleFunc("GET /view", s.handleView)
	mux.HandleFunc("POST /interrupt", s.handleInterrupt)
	mux.HandleFunc("POST /free", s.handleFree)
	mux.HandleFunc("GET /system_stats", s.handleSystemStats)
	mux.HandleFunc("GET /standin/loaded", s.handleLoaded)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(2)
	go func() { defer s.wg.Done(); _ = s.http.Serve(ln) }()
	go func() { defer s.wg.Done(); s.executor() }()
	s.log.Info("comfyuistandin: serving", "url", s.URL(), "folders", len(s.folders), "output", cfg.OutputDir)
	return s, nil
}

// URL is the server's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.ln.Addr().String() }

// OutputDir is where outputs are written.
func (s *Server) OutputDir() string { return s.cfg.OutputDir }

// Close stops serving and ends the running prompt.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	for _, c := range s.sockets {
		_ = c.CloseNow()
	}
	s.mu.Unlock()
	err := s.http.Close()
	s.wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// parseExtraModelPaths reads the subset of extra_model_paths.yaml that
// hearth writes and ComfyUI's examples use: sections of "key: value" lines,
// a base_path, and folder keys whose values are paths (one per line in a
// "|" block, or one inline), relative to base_path.
func parseExtraModelPaths(b []byte, into map[string][]string) error {
	type section struct {
		base    string
		entries map[string][]string
	}
	var secs []*section
	var cur *section
	var blockKey string
	for n, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimRight(raw, " \t\r")
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimRight(line[:i], " \t")
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		text := strings.TrimSpace(line)
		if indent == 0 {
			if !strings.HasSuffix(text, ":") {
				return fmt.Errorf("line %d: want a section name ending in ':'", n+1)
			}
			cur = &section{entries: map[string][]string{}}
			secs = append(secs, cur)
			blockKey = ""
			continue
		}
		if cur == nil {
			return fmt.Errorf("line %d: entry outside a section", n+1)
		}
		key, val, ok := strings.Cut(text, ":")
		if blockKey != "" && (!ok || indent > 2) {
			cur.entries[blockKey] = append(cur.entries[blockKey], unquote(text))
			continue
		}
		if !ok {
			return fmt.Errorf("line %d: want key: value", n+1)
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		blockKey = ""
		switch {
		case key == "base_path":
			cur.base = unquote(val)
		case key == "is_default":
		case val == "|" || val == "":
			blockKey = key
		default:
			cur.entries[key] = append(cur.entries[key], unquote(val))
		}
	}
	for _, sec := range secs {
		for key, paths := range sec.entries {
			for _, p := range paths {
				if !filepath.IsAbs(p) {
					p = filepath.Join(sec.base, p)
				}
				into[key] = append(into[key], filepath.Clean(p))
			}
		}
	}
	return nil
}

func unquote(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return strings.Trim(s, `'`)
}

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// send writes one {"type", "data"} message to client sid, if connected; a
// slow or gone client is dropped, as ComfyUI drops it.
func (s *Server) send(sid, typ string, data any) {
	s.mu.Lock()
	c := s.sockets[sid]
	s.mu.Unlock()
	if c == nil {
		return
	}
	b, err := json.Marshal(map[string]any{"type": typ, "data": data})
	if err != nil {
		s.log.Error("comfyuistandin: encode message", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, b); err != nil {
		s.log.Debug("comfyuistandin: client gone", "sid", sid, "err", err)
	}
}

// broadcastStatus sends every client the queue length, as ComfyUI does
// whenever its queue changes.
func (s *Server) broadcastStatus() {
	s.mu.Lock()
	remaining := len(s.queue)
	if s.running != nil {
		remaining++
	}
	sids := make([]string, 0, len(s.sockets))
	for sid := range s.sockets {
		sids = append(sids, sid)
	}
	s.mu.Unlock()
	for _, sid := range sids {
		s.send(sid, "status", statusData(remaining, ""))
	}
}

func statusData(remaining int, sid string) map[string]any {
	d := map[string]any{"status": map[string]any{"exec_info": map[string]any{"queue_remaining": remaining}}}
	if sid != "" {
		d["sid"] = sid
	}
	return d
}

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	sid := r.URL.Query().Get("clientId")
	if sid == "" {
		sid = strconv.FormatInt(time.Now().UnixNano(), 16)
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	// A reconnect with the same clientId takes over its messages; the
	// older socket is closed.
	s.mu.Lock()
	if old := s.sockets[sid]; old != nil {
		_ = old.CloseNow()
	}
	s.sockets[sid] = c
	remaining := len(s.queue)
	if s.running != nil {
		remaining++
	}
	s.mu.Unlock()
	// The greeting tells the client its socket is registered, as
	// ComfyUI's does; a client should queue prompts only after it.
	s.send(sid, "status", statusData(remaining, sid))
	// Read until the client goes; clients send nothing ComfyUI acts on here.
	for {
		if _, _, err := c.Read(s.ctx); err != nil {
			break
		}
	}
	s.mu.Lock()
	if s.sockets[sid] == c {
		delete(s.sockets, sid)
	}
	s.mu.Unlock()
	_ = c.CloseNow()
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	h, ok := s.history[id]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusOK, map[string]any{})
		return
	}
	writeJSON(w, http.StatusOK, map[string]json.RawMessage{id: h})
}

func (s *Server) handleView(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name, sub, typ := q.Get("filename"), q.Get("subfolder"), q.Get("type")
	base := s.cfg.OutputDir
	switch typ {
	case "", "output":
	case "temp":
		base = s.tempDir
	default:
		http.Error(w, "unknown type", http.StatusBadRequest)
		return
	}
	rel := filepath.Join(filepath.FromSlash(sub), filepath.FromSlash(name))
	if name == "" || !filepath.IsLocal(rel) {
		http.Error(w, "bad filename", http.StatusBadRequest)
		return
	}
	f, err := os.Open(filepath.Join(base, rel))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Disposition", fmt.Sprintf("filename=%q", name))
	http.ServeContent(w, r, name, fi.ModTime(), f)
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		PromptID string `json:"prompt_id"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	s.mu.Lock()
	if p := s.running; p != nil && (body.PromptID == "" || body.PromptID == p.id) {
		p.interrupt()
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleFree(w http.ResponseWriter, r *http.Request) {
	var body struct {
		UnloadModels bool `json:"unload_models"`
		FreeMemory   bool `json:"free_memory"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	if body.UnloadModels || body.FreeMemory {
		s.mu.Lock()
		s.freeAsked = true
		idle := s.running == nil
		s.mu.Unlock()
		if idle {
			s.poke()
		}
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleLoaded(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := make(map[string]loadedModel, len(s.loaded))
	for k, v := range s.loaded {
		out[k] = v
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleSystemStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"system": map[string]any{"os": "posix", "comfyui_version": "hearth-standin", "python_version": "none", "embedded_python": false},
		"devices": []map[string]any{{"name": "standin:" + s.cfg.CUDADevice, "type": "standin", "index": 0,
			"vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0}},
	})
}

func (s *Server) handleQueue(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	running, pending := []any{}, []any{}
	if s.running != nil {
		running = append(running, []any{s.running.number, s.running.id})
	}
	for _, p := range s.queue {
		pending = append(pending, []any{p.number, p.id})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"queue_running": running, "queue_pending": pending})
}

func (s *Server) handleQueueInfo(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	n := len(s.queue)
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"exec_info": map[string]any{"queue_remaining": n}})
}

func (s *Server) handleQueueEdit(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Delete []string `json:"delete"`
		Clear  bool     `json:"clear"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	s.mu.Lock()
	kept := s.queue[:0]
	for _, p := range s.queue {
		drop := body.Clear
		for _, id := range body.Delete {
			drop = drop || id == p.id
		}
		if !drop {
			kept = append(kept, p)
		}
	}
	s.queue = kept
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
