package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/internal/sdnotify"
)

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runCoordinator(args []string, stderr io.Writer) error {
	cfg := coordinator.DefaultConfig()
	fs := newFlags("coordinator", stderr)
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "this node's Raft id (stable across restarts)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP API listen address")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "Raft listen and advertise address")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", false, "form a new single-voter cluster if the data dir is empty")
	peers := fs.String("peers", "", "initial voters, id=raft-host:port,... (this node included; the same list on every node)")
	fs.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 0, "form a new cluster once this many nodes (with --join) have found each other")
	join := fs.String("join", "", "HTTP URLs of other coordinators, comma-separated: discover them (--bootstrap-expect) or join their cluster")
	fs.DurationVar(&cfg.HeartbeatGrace, "heartbeat-grace", cfg.HeartbeatGrace, "mark a host down after this long without a heartbeat")
	tokensFile := fs.String("tokens-file", "", "file of bearer tokens, one name:scope[,scope]:secret per line (enables auth)")
	fs.StringVar(&cfg.ClusterToken, "cluster-token", os.Getenv("HEARTH_CLUSTER_TOKEN"), "admin token this node presents to other coordinators (default $HEARTH_CLUSTER_TOKEN)")
	webhookSecretFile := fs.String("webhook-secret-file", "", "file holding the whsec_... key that signs webhooks")
	webhookHosts := fs.String("webhook-allow-hosts", "", "comma-separated hosts webhooks may go to (*.example.com allows subdomains); empty allows any")
	fs.BoolVar(&cfg.RaftFastTimeouts, "raft-fast-timeouts", false, "short Raft timeouts, for tests on loopback")
	gossipFs := addGossipFlags(fs)
	maxBody := fs.String("max-body", "16MiB", "largest request body accepted")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if cfg.DataDir == "" {
		return usagef("coordinator needs --data-dir")
	}
	n, err := parseBytes(*maxBody)
	if err != nil {
		return usagef("--max-body: %v", err)
	}
	cfg.MaxBodyBytes = int(n)
	if cfg.Peers, err = coordinator.ParsePeers(*peers); err != nil {
		return usagef("--peers: %v", err)
	}
	cfg.Join = splitList(*join)
	if cfg.Gossip, err = gossipFs.config(); err != nil {
		return err
	}
	cfg.WebhookAllowHosts = splitList(*webhookHosts)
	if *tokensFile != "" {
		if cfg.Tokens, err = readTokens(*tokensFile); err != nil {
			return usagef("--tokens-file: %v", err)
		}
	}
	if *webhookSecretFile != "" {
		b, err := os.ReadFile(*webhookSecretFile)
		if err != nil {
			return usagef("--webhook-secret-file: %v", err)
		}
		cfg.WebhookSecret = strings.TrimSpace(string(b))
	}
	if err := coordinator.ValidateConfig(&cfg); err != nil {
		return usagef("%v", err)
	}
	if cfg.Logger, err = newLogger(stderr, *logLevel); err != nil {
		return err
	}
	if dryRunDone(stderr) {
		return nil
	}
	srv, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	// HTTP listens and Raft runs once New returns.
	sdnotify.Ready("serving on " + srv.URL())
	wctx, wstop := context.WithCancel(context.Background())
	defer wstop()
	go sdnotify.Watchdog(wctx, cfg.Logger, srv.Healthy)
	<-ctx.Done()
	sdnotify.Stopping("shutting down")
	cfg.Logger.Info("shutting down")
	return srv.Close()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// readTokens reads a tokens file: one name:scope[,scope]:secret per line;
// blank lines and lines starting with # are skipped.
func readTokens(path string) ([]coordinator.Token, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []coordinator.Token
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := coordinator.ParseToken(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %v", path, i+1, err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s holds no tokens", path)
	}
	return out, nil
}

func runAgent(args []string, stderr io.Writer) error {
	cfg := agent.DefaultConfig()
	fs := newFlags("agent", stderr)
	fs.StringVar(&cfg.HostID, "host-id", cfg.HostID, "this host's id (default: the hostname)")
	fs.StringVar(&cfg.CoordinatorURL, "coordinator", cfg.CoordinatorURL, "URL of any coordinator node, or several, comma-separated")
	fs.StringVar(&cfg.Token, "token", os.Getenv("HEARTH_TOKEN"), "bearer token with the agent scope (default $HEARTH_TOKEN)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the blob cache and job outputs (required)")
	fs.StringVar(&cfg.OriginDir, "origin-dir", "", "local origin directory holding model files (required without --s3-endpoint)")
	s3 := addS3Flags(fs, true)
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:7710", "address of the agent's HTTP server (/metrics, /healthz); empty: none")
	ramMax := fs.String("ram-max", "0", "RAM tier budget: models held resident in host memory (0: no RAM tier)")
	fs.DurationVar(&cfg.ScrubInterval, "scrub-interval", 24*time.Hour, "how often every cached blob is rehashed (0: never)")
	scrubRate := fs.String("scrub-rate", "200MB", "disk read rate the scrub may use, per second")
	fs.BoolVar(&cfg.MeasureBandwidth, "measure-bandwidth", true, "time the cache disk's read rate at start and report it to the scheduler")
	peerTokenFile := fs.String("peer-token-file", "", "file holding the pool's peer token: hosts that present it may fetch blobs from this one")
	peerRate := fs.String("peer-rate", "0", "upload rate to each peer fetching blobs, per second (0: unlimited)")
	gossipFs := addGossipFlags(fs)
	labels := addLabelFlags(fs)
	sim := fs.String("sim-gpus", "Simulated H200:141GiB", "inventory used when NVML is unavailable: NAME:SIZE[,NAME:SIZE...]")
	slot := fs.String("slot-size", "24GiB", "VRAM slot size")
	reserve := fs.String("reserve", "2GiB", "VRAM held back on every GPU")
	cacheMax := fs.String("cache-max", "0", "disk cache budget (0: unlimited)")
	fs.IntVar(&cfg.MaxSlotsPerGPU, "max-slots", 0, "cap on slots per GPU (0: as many as fit)")
	fs.StringVar(&cfg.Runner, "runner", cfg.Runner, "what runs workflow jobs in each slot: worker (a process speaking the worker protocol) or comfyui (one ComfyUI server per slot)")
	worker := fs.String("worker", "", "worker command line (default: the built-in reference worker)")
	comfyCmd := fs.String("comfyui-command", "", "command line that starts one ComfyUI server, with {host} {port} {gpu} {extra_model_paths} {output_dir} filled in per slot (default: python3 main.py with those flags, run in --comfyui-dir)")
	fs.StringVar(&cfg.ComfyUI.Dir, "comfyui-dir", "", "directory the ComfyUI servers start in (a ComfyUI checkout)")
	comfyURLs := fs.String("comfyui-url", "", "attach to running ComfyUI servers instead of starting them: one URL per slot, comma-separated, in GPU/slot order")
	fs.DurationVar(&cfg.ComfyUI.StartTimeout, "comfyui-start-timeout", runner.DefaultComfyUIStartTimeout, "how long a starting ComfyUI server may take to answer")
	fs.IntVar(&cfg.GPUTempMaxC, "gpu-temp-max", cfg.GPUTempMaxC, "GPU temperature in °C above which the host takes no new jobs until it cools (-1: no limit)")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "on SIGTERM or SIGINT, how long running jobs may go on before they are cancelled and requeued elsewhere (a second signal stops at once)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.S3, err = s3.config(); err != nil {
		return err
	}
	cfg.Results = s3.results(cfg.S3)
	if cfg.DataDir == "" || (cfg.OriginDir == "" && cfg.S3 == nil) {
		return usagef("agent needs --data-dir, and --origin-dir or --s3-endpoint")
	}
	cfg.Addr = cfg.HTTPAddr
	rm, err := parseBytes(*ramMax)
	if err != nil {
		return usagef("--ram-max: %v", err)
	}
	cfg.RAMMaxBytes = int64(rm)
	sr, err := parseBytes(*scrubRate)
	if err != nil {
		return usagef("--scrub-rate: %v", err)
	}
	cfg.ScrubBytesPerSec = int64(sr)
	pr, err := parseBytes(*peerRate)
	if err != nil {
		return usagef("--peer-rate: %v", err)
	}
	cfg.PeerRateBytesPerSec = int64(pr)
	if *peerTokenFile != "" {
		b, err := os.ReadFile(*peerTokenFile)
		if err != nil {
			return usagef("--peer-token-file: %v", err)
		}
		if cfg.PeerToken = strings.TrimSpace(string(b)); cfg.PeerToken == "" {
			return usagef("--peer-token-file: %s is empty", *peerTokenFile)
		}
	}
	if cfg.Gossip, err = gossipFs.config(); err != nil {
		return err
	}
	cfg.Labels = labels()
	if cfg.SimGPUs, err = parseSimGPUs(*sim); err != nil {
		return usagef("--sim-gpus: %v", err)
	}
	if cfg.SlotBytes, err = parseBytes(*slot); err != nil {
		return usagef("--slot-size: %v", err)
	}
	if cfg.ReserveBytes, err = parseBytes(*reserve); err != nil {
		return usagef("--reserve: %v", err)
	}
	cm, err := parseBytes(*cacheMax)
	if err != nil {
		return usagef("--cache-max: %v", err)
	}
	cfg.CacheMaxBytes = int64(cm)
	if *worker != "" {
		cfg.WorkerCommand = strings.Fields(*worker)
	}
	if *comfyCmd != "" {
		cfg.ComfyUI.Command = strings.Fields(*comfyCmd)
	}
	cfg.ComfyUI.URLs = splitList(*comfyURLs)
	if cfg.Runner != agent.RunnerWorker && cfg.Runner != agent.RunnerComfyUI {
		return usagef("--runner %q must be %s or %s", cfg.Runner, agent.RunnerWorker, agent.RunnerComfyUI)
	}
	if cfg.Runner != agent.RunnerComfyUI && (*comfyCmd != "" || len(cfg.ComfyUI.URLs) > 0 || cfg.ComfyUI.Dir != "") {
		return usagef("--comfyui-command, --comfyui-dir and --comfyui-url need --runner comfyui")
	}
	if cfg.Logger, err = newLogger(stderr, *logLevel); err != nil {
		return err
	}
	if dryRunDone(stderr) {
		if err := agent.ValidateConfig(&cfg); err != nil {
			return usagef("%v", err)
		}
		return nil
	}
	ctx, stop := signalContext()
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	a, err := agent.New(startCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	// Registered, and serving HTTP when configured to.
	sdnotify.Ready("registered with " + cfg.CoordinatorURL)
	wctx, wstop := context.WithCancel(context.Background())
	defer wstop()
	go sdnotify.Watchdog(wctx, cfg.Logger, a.Healthy)
	<-ctx.Done()
	// A second signal ends the wait for running jobs at once; watch for it
	// before letting go of the first, so none slips through to the default
	// action (which would leave workers behind and skip deregistering).
	again, stopAgain := signalContext()
	defer stopAgain()
	stop()
	sdnotify.Stopping(fmt.Sprintf("shutting down: waiting up to %s for running jobs", cfg.ShutdownTimeout))
	return a.Shutdown(again)
}

// parseBytes reads sizes like 512, 16MiB, 24GiB, 1.5GB.
func parseBytes(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := 1.0
	num := strings.TrimSpace(s)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			mult, num = u.mult, strings.TrimSpace(strings.TrimSuffix(num, u.suffix))
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || f*mult > 1<<60 {
		return 0, fmt.Errorf("%q is not a size like 512MiB or 24GiB", s)
	}
	return uint64(f * mult), nil
}

func parseSimGPUs(s string) ([]gpu.SimGPU, error) {
	var out []gpu.SimGPU
	for _, part := range strings.Split(s, ",") {
		name, size, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("%q must look like NAME:SIZE, e.g. H200:141GiB", part)
		}
		n, err := parseBytes(size)
		if err != nil {
			return nil, err
		}
		out = append(out, gpu.SimGPU{Name: name, MemoryBytes: n})
	}
	return out, nil
}
