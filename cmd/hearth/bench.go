package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/proto"
)

// runBench runs "bench heartbeat" (see benchheartbeat.go) or "bench
// submit": many concurrent clients submit a typical
// SDXL text-to-image workflow to a loopback cluster with durable Raft logs,
// and it prints jobs/s and accept latency for a 3-node and a 1-node
// cluster, with the same run's baselines (a GET /healthz round trip on the
// same HTTP stack, and one fsync on the same disk).
func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "heartbeat" {
		return runBenchHeartbeat(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "submit" {
		return usagef("bench needs a subcommand: submit or heartbeat")
	}
	fs := newFlags("bench submit", stderr)
	nodes := fs.Int("nodes", 3, "coordinators in the cluster (a 1-node run follows for comparison)")
	clients := fs.Int("clients", 64, "concurrent submitting clients")
	duration := fs.Duration("duration", 10*time.Second, "how long each run submits")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	payload := fs.String("payload", "workflow", "what to submit: workflow (a 3 KB SDXL ComfyUI export) or exec (a 40-byte exec spec, to see the cost of the pipeline without the workflow)")
	addr := fs.String("addr", "", "bench an existing cluster at this URL instead of starting one")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token for --addr (default $HEARTH_TOKEN)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *nodes < 1 || *nodes > 9 || *clients < 1 || *duration <= 0 {
		return usagef("bench submit needs 1-9 nodes, at least one client and a positive duration")
	}
	var body []byte
	var err error
	switch *payload {
	case "workflow":
		body, err = benchWorkflow()
	case "exec":
		body = []byte(`{"exec":{"command":["true"]}}`)
	default:
		return usagef("--payload must be workflow or exec")
	}
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	what := "sdxl_txt2img workflow (API format, indented as ComfyUI exports it)"
	if *payload == "exec" {
		what = "exec spec"
	}
	fmt.Fprintf(stdout, "payload: %s, %d bytes; %d clients; %s per run\n", what, len(body), *clients, *duration)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cluster\tjobs/s\tp50 ms\tp99 ms\tmax ms\terrors\tjobs/entry\t")
	runs := []int{*nodes}
	if *addr == "" && *nodes != 1 {
		runs = append(runs, 1)
	}
	var base benchBaseline
	for _, n := range runs {
		url := *addr
		var stop func()
		if url == "" {
			var dir string
			url, dir, stop, err = startBenchCluster(n)
			if err != nil {
				return err
			}
			if base.fsync == 0 {
				base.fsync = fsyncP50(dir)
			}
		}
		if err := registerBenchModels(url, *token); err != nil {
			stop()
			return err
		}
		r := loadSubmit(url, *token, body, *clients, *duration)
		if base.healthz == 0 {
			base.healthz = healthzP50(url)
		}
		batch := batchAverage(url)
		if stop != nil {
			stop()
		}
		label := fmt.Sprintf("%d node", n)
		if n > 1 {
			label += "s"
		}
		if *addr != "" {
			label = *addr
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%.2f\t%d\t%.1f\t\n", label, r.rate, ms(r.p50), ms(r.p99), ms(r.max), r.errors, batch)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "baselines: GET /healthz round trip p50 %.3f ms; fsync of a 4 KiB write p50 %.3f ms\n", ms(base.healthz), ms(base.fsync))
	return nil
}

type benchBaseline struct{ healthz, fsync time.Duration }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchWorkflow is the SDXL example as ComfyUI's "Export (API)" writes a
// real one: every node with its _meta title, a prompt of typical length,
// indented by two spaces: about 3 KB.
func benchWorkflow() ([]byte, error) {
	for _, w := range examples.Workflows() {
		if w.Name != "sdxl_txt2img" {
			continue
		}
		var nodes map[string]map[string]any
		if err := json.Unmarshal(w.JSON, &nodes); err != nil {
			return nil, err
		}
		for _, n := range nodes {
			n["_meta"] = map[string]string{"title": fmt.Sprint(n["class_type"])}
			if in, ok := n["inputs"].(map[string]any); ok && in["text"] != nil && in["text"] != "blurry, low quality" {
				in["text"] = "a cosy hearth in a stone cottage at dusk, warm light spilling across worn oak floorboards, " +
					"a sleeping cat on a knitted rug, copper kettle on the hob, snow falling past leaded windows, " +
					"cinematic lighting, volumetric haze, 35mm photograph, shallow depth of field, highly detailed, " +
					"sharp focus, film grain, muted earthy palette, golden hour glow, masterpiece, best quality"
			}
		}
		wf, err := json.MarshalIndent(nodes, "  ", "  ")
		if err != nil {
			return nil, err
		}
		// Not json.Marshal: it would compact the indented workflow.
		return slices.Concat([]byte("{\n  \"workflow\": "), wf, []byte("\n}\n")), nil
	}
	return nil, errors.New("bench: the sdxl_txt2img example is missing")
}

// startBenchCluster starts n coordinators in this process on loopback,
// each with its Raft log on disk, and returns the leader's URL.
func startBenchCluster(n int) (url, dir string, stop func(), err error) {
	dir, err = os.MkdirTemp("", "hearth-bench-")
	if err != nil {
		return "", "", nil, err
	}
	var cfgs []coordinator.Config
	var peers []coordinator.Peer
	for i := range n {
		cfg := coordinator.DefaultConfig()
		cfg.NodeID = fmt.Sprintf("bench-%d", i+1)
		cfg.DataDir = filepath.Join(dir, cfg.NodeID)
		cfg.HTTPAddr = "127.0.0.1:0"
		if cfg.RaftAddr, err = freeLoopbackAddr(); err != nil {
			return "", "", nil, err
		}
		cfg.RaftLogLevel = "off"
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		peers = append(peers, coordinator.Peer{ID: cfg.NodeID, RaftAddr: cfg.RaftAddr})
		cfgs = append(cfgs, cfg)
	}
	var servers []*coordinator.Server
	stop = func() {
		for _, s := range servers {
			s.Close()
		}
		os.RemoveAll(dir)
	}
	for i := range cfgs {
		cfgs[i].Peers = peers
		s, err := coordinator.New(cfgs[i])
		if err != nil {
			stop()
			return "", "", nil, err
		}
		servers = append(servers, s)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range servers {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			err := s.WaitLeader(ctx)
			cancel()
			if err == nil {
				return s.URL(), filepath.Join(dir, "bench-1"), stop, nil
			}
		}
	}
	stop()
	return "", "", nil, errors.New("bench: no leader elected in 30 s")
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func registerBenchModels(url, token string) error {
	api := newClient(url, token)
	for _, m := range []string{"checkpoints/sd_xl_base_1.0.safetensors", "vae/sdxl_vae.safetensors"} {
		_, d, _ := proto.DigestOf(strings.NewReader(m))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := api.PutModel(ctx, proto.Model{Name: m, Digest: d, Size: 6_938_000_000})
		cancel()
		if err != nil {
			return fmt.Errorf("bench: register %s: %w", m, err)
		}
	}
	return nil
}

type loadResult struct {
	rate          float64
	p50, p99, max time.Duration
	errors        int64
}

// loadSubmit runs clients submitting body back to back for d. It uses
// fasthttp's client, the leanest on this machine's shared CPUs.
func loadSubmit(url, token string, body []byte, clients int, d time.Duration) loadResult {
	hc := &fasthttp.Client{MaxConnsPerHost: clients, ReadTimeout: 30 * time.Second}
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs atomic.Int64
	)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) {
				req.Reset()
				req.SetRequestURI(url + "/v1/jobs")
				req.Header.SetMethod("POST")
				req.Header.SetContentType("application/json")
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				req.SetBodyRaw(body)
				t := time.Now()
				err := hc.Do(req, resp)
				if err != nil || resp.StatusCode() != 202 {
					errs.Add(1)
					continue
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			lats = append(lats, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lats)
	r := loadResult{errors: errs.Load()}
	if len(lats) > 0 {
		r.rate = float64(len(lats)) / elapsed.Seconds()
		r.p50, r.p99, r.max = lats[len(lats)/2], lats[len(lats)*99/100], lats[len(lats)-1]
	}
	return r
}

func healthzP50(url string) time.Duration {
	api := client.New(url, nil)
	var lats []time.Duration
	for range 500 {
		t := time.Now()
		if _, err := api.Do(context.Background(), "GET", "/healthz", nil, nil); err == nil {
			lats = append(lats, time.Since(t))
		}
	}
	if len(lats) == 0 {
		return 0
	}
	slices.Sort(lats)
	return lats[len(lats)/2]
}

func fsyncP50(dir string) time.Duration {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return 0
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := bytes.Repeat([]byte{1}, 4096)
	var lats []time.Duration
	for range 200 {
		t := time.Now()
		if _, err := f.Write(buf); err != nil || f.Sync() != nil {
			return 0
		}
		lats = append(lats, time.Since(t))
	}
	slices.Sort(lats)
	return lats[len(lats)/2]
}

// batchAverage reads the leader's group-commit histogram: jobs per entry.
func batchAverage(url string) float64 {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url + "/metrics")
	if err := fasthttp.Do(req, resp); err != nil {
		return 0
	}
	var sum, count float64
	for _, line := range strings.Split(string(resp.Body()), "\n") {
		if v, ok := strings.CutPrefix(line, "hearth_submit_batch_jobs_sum "); ok {
			fmt.Sscan(v, &sum)
		}
		if v, ok := strings.CutPrefix(line, "hearth_submit_batch_jobs_count "); ok {
			fmt.Sscan(v, &count)
		}
	}
	if count == 0 {
		return 0
	}
	return sum / count
}

// startCPUProfile writes a CPU profile to path until the returned stop is
// called; with no path it does nothing.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, usagef("--cpuprofile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
