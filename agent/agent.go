package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Version is reported at registration; the binary sets it at link time.
var Version = "dev"

// Agent is one host's daemon. New starts it; Close stops it.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	api     *client.Client
	devs    gpu.Devices
	gpus    []proto.GPU
	pools   []*gpu.SlotPool
	cache   *cachefs.Store
	ram     *cachefs.RAMTier // nil without a RAM budget
	views   *cachefs.Views
	origin  cachefs.Origin
	results resultStore
	exec    *runner.Exec

	reg          *prometheus.Registry
	cacheMetrics *cachefs.Metrics
	http         *httpServer // nil without HTTPAddr
	peers        *peerPool   // nil outside a gossip pool
	bandwidth    map[proto.Tier]float64

	peerBytesServed prometheus.Counter
	limMu           sync.Mutex
	limiters        map[string]*rateLimiter // per requesting peer

	slots []*slot // every slot of every GPU, in (gpu, slot) order

	healthMu      sync.Mutex
	health        gpuHealth
	gpuStates     []proto.GPUState
	degradedGauge prometheus.Gauge

	// beatMu keeps one heartbeat in flight at a time: each one's
	// inventory change builds on the answer to the one before (inv).
	beatMu      sync.Mutex
	pokePending atomic.Bool // a poked heartbeat waits for beatMu
	inv         *inventorySync

	mu   sync.Mutex
	jobs map[string]*jobRun // live assignments by job id
	life lifecycle          // registration, shutdown, liveness (shutdown.go)

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New discovers GPUs, opens the cache and starts the agent's loops. It
// returns once the agent is registered with the coordinator, or with an
// error if ctx ends first.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.fillDefaults(); err != nil {
		return nil, err
	}
	if err := ValidateConfig(&cfg); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("host", cfg.HostID), api: client.New(cfg.CoordinatorURL, nil).WithToken(cfg.Token), jobs: make(map[string]*jobRun), inv: newInventorySync(time.Now())}
	for _, d := range []string{cfg.resultsDir(), cfg.workDir()} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("agent: create %s: %w", d, err)
		}
	}
	a.reg = prometheus.NewRegistry()
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.cacheMetrics = cachefs.NewMetrics(a.reg)
	a.peerBytesServed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hearth_peer_bytes_served_total", Help: "Blob bytes this host sent to other hosts of the pool.",
	})
	a.degradedGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "hearth_host_degraded", Help: "1 while the host takes no new placements because of a GPU fault or temperature.",
	})
	a.reg.MustRegister(a.peerBytesServed, a.degradedGauge)
	if err := a.openCache(ctx); err != nil {
		return nil, err
	}
	a.bandwidth = a.tierBandwidths()
	a.exec = runner.NewExec(runner.ExecConfig{Logger: a.log})
	if a.devs = cfg.Devices; a.devs == nil {
		a.devs = gpu.Detect(a.log, cfg.SimGPUs)
	}
	if err := a.buildSlots(); err != nil {
		a.closeCache()
		a.devs.Close()
		return nil, err
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	if cfg.HTTPAddr != "" {
		var err error
		if a.http, err = a.serveHTTP(cfg.HTTPAddr); err != nil {
			a.Close()
			return nil, err
		}
	}
	if err := a.startGossip(); err != nil {
		a.Close()
		return nil, err
	}
	if err := a.register(ctx); err != nil {
		a.Close()
		return nil, err
	}
	a.life.markRegistered()
	for _, sl := range a.slots {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); sl.loop(a.ctx) }()
	}
	a.wg.Add(2)
	go func() { defer a.wg.Done(); a.heartbeatLoop() }()
	go func() { defer a.wg.Done(); a.pollLoop() }()
	if cfg.ScrubInterval > 0 {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.scrubLoop() }()
	}
	return a, nil
}

// buildSlots reads the devices once and creates a slot pool per GPU.
func (a *Agent) buildSlots() error {
	devs, err := a.devs.Devices()
	if err != nil {
		return fmt.Errorf("agent: read GPUs (%s): %w", a.devs.Kind(), err)
	}
	if len(devs) == 0 {
		return errors.New("agent: no GPUs found; configure a simulated inventory to run without one")
	}
	for _, d := range devs {
		if d.MIGEnabled {
			// Its memory belongs to MIG instances, which the pool cannot
			// see into: carving it would over-commit.
			a.log.Warn("GPU in MIG mode: not carving it into slots", "gpu", d.Index, "uuid", d.UUID)
			continue
		}
		g := d.ToProto(a.cfg.ReserveBytes, a.cfg.SlotBytes)
		if a.cfg.MaxSlotsPerGPU > 0 && g.Slots > a.cfg.MaxSlotsPerGPU {
			g.Slots = a.cfg.MaxSlotsPerGPU
		}
		if g.Slots == 0 {
			return fmt.Errorf("agent: GPU %d (%s) has %d bytes after the %d-byte reserve, less than one %d-byte slot",
				d.Index, d.Name, d.MemoryTotal-min(d.MemoryTotal, a.cfg.ReserveBytes), a.cfg.ReserveBytes, a.cfg.SlotBytes)
		}
		pool, err := gpu.NewSlotPool(d.Index, a.cfg.ReserveBytes+uint64(g.Slots)*a.cfg.SlotBytes, a.cfg.ReserveBytes, a.cfg.SlotBytes)
		if err != nil {
			return err
		}
		a.gpus = append(a.gpus, g)
		a.pools = append(a.pools, pool)
		for i := 0; i < g.Slots; i++ {
			sl := newSlot(a, d.Index, i, int64(a.cfg.SlotBytes))
			sl.ordinal = len(a.slots)
			a.slots = append(a.slots, sl)
		}
	}
	if len(a.gpus) == 0 {
		return errors.New("agent: every GPU is in MIG mode; hearth carves whole GPUs only (disable MIG with nvidia-smi -mig 0)")
	}
	if n := len(a.cfg.ComfyUI.URLs); a.cfg.Runner == RunnerComfyUI && n > 0 && n != len(a.slots) {
		return fmt.Errorf("agent: %d ComfyUI URLs for %d slots: attach one server per slot (in GPU, slot order), or change the slot size or the slot cap to make %d slots", n, len(a.slots), n)
	}
	a.log.Info("GPU inventory", "kind", a.devs.Kind(), "gpus", len(a.gpus), "slots", len(a.slots), "slot_bytes", a.cfg.SlotBytes)
	return nil
}

func (a *Agent) hostRecord() proto.Host {
	return proto.Host{
		ID: a.cfg.HostID, Addr: a.cfg.Addr, DeviceKind: a.devs.Kind(), GPUs: a.gpus,
		Labels: a.cfg.Labels, Bandwidth: a.bandwidth, Version: Version,
		PeerFetch: a.peers != nil && a.cfg.PeerToken != "",
		Kinds:     a.kinds(),
		Runner:    a.cfg.Runner,
	}
}

// kinds lists the job kinds this host's runners take: every kind with
// workers, and no worker payloads on slots that run ComfyUI servers.
func (a *Agent) kinds() []string {
	if a.cfg.Runner == RunnerComfyUI {
		return []string{"workflow", "exec"}
	}
	return []string{"workflow", "worker", "exec"}
}

func (a *Agent) takes(kind string) bool { return slices.Contains(a.kinds(), kind) }

// register retries until the coordinator records this host or ctx ends.
func (a *Agent) register(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := a.api.Register(ctx, a.hostRecord())
		if err == nil {
			a.log.Info("registered", "coordinator", a.api.Base())
			return nil
		}
		var ae *client.Error
		if errors.As(err, &ae) && ae.Status >= 400 && ae.Status < 500 {
			return fmt.Errorf("agent: coordinator refused registration: %w", err)
		}
		a.log.Warn("registration failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("agent: register with %s: %w (last error: %v)", a.api.Base(), ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// Heartbeat builds the host's live state, with the whole cache inventory
// in Cache. What goes on the wire carries only the inventory's change
// instead (see sendHeartbeat).
func (a *Agent) Heartbeat() proto.Heartbeat {
	b := proto.Heartbeat{HostID: a.cfg.HostID, Time: time.Now().UTC(), Slots: make([]proto.SlotState, 0, len(a.slots))}
	for _, sl := range a.slots {
		b.Slots = append(b.Slots, sl.state())
	}
	b.Cache = a.cacheInventory()
	b.Degraded = a.Degraded()
	b.Draining = a.life.leaving.Load()
	b.GPUs = a.GPUStates()
	return b
}

func (a *Agent) heartbeatLoop() {
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		a.life.markTick()
		a.updateHealth()
		a.sendHeartbeat()
		a.publishInventory()
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sendHeartbeat sends the host's live state, after the heartbeat in flight
// if there is one.
func (a *Agent) sendHeartbeat() {
	a.beatMu.Lock()
	defer a.beatMu.Unlock()
	a.sendHeartbeatLocked()
}

func (a *Agent) sendHeartbeatLocked() {
	ctx, cancel := context.WithTimeout(a.ctx, heartbeatTimeout)
	defer cancel()
	err := a.beat(ctx)
	if client.IsCode(err, "host_not_registered") {
		// A coordinator that lost or never had our registration (a fresh
		// cluster) learns it again, and the whole inventory with it.
		if err = a.register(ctx); err == nil {
			a.inv.reset()
			err = a.beat(ctx)
		}
	}
	if err == nil {
		a.life.markContact()
	} else if a.ctx.Err() == nil {
		a.log.Warn("heartbeat failed", "err", err)
	}
}

// beat sends one heartbeat whose inventory part is the change since the
// version the coordinator acknowledged. If the answer says the coordinator
// holds no version to build on (a new leader), or it refused the change,
// a second beat with the whole inventory follows at once rather than an
// interval later. Callers hold beatMu.
func (a *Agent) beat(ctx context.Context) error {
	for first := true; ; first = false {
		b := a.Heartbeat()
		whole := a.inv.prepare(&b, time.Now())
		ack, err := a.api.Heartbeat(ctx, b)
		if err != nil {
			if a.inv.refused(err, whole, time.Now()) && first {
				a.log.Warn("coordinator refused the heartbeat's inventory; sending the whole inventory", "err", err)
				continue
			}
			return err
		}
		if a.inv.ack(ack.InventoryVersion) && !whole && first {
			continue
		}
		return nil
	}
}

// poke sends a heartbeat now, so the scheduler sees a slot's new residency
// before it places the next job. Pokes while one already waits to be sent
// add nothing: that one reads the state when it goes.
func (a *Agent) poke() {
	if !a.pokePending.CompareAndSwap(false, true) {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.beatMu.Lock()
		defer a.beatMu.Unlock()
		a.pokePending.Store(false)
		a.sendHeartbeatLocked()
	}()
}

// Close stops taking work, cancels running jobs, stops workers and releases
// the cache. Only the first call does anything.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() { a.closeErr = a.close() })
	return a.closeErr
}

func (a *Agent) close() error {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	a.deregisterIfLeaving()
	var errs []error
	for _, sl := range a.slots {
		errs = append(errs, sl.close())
	}
	errs = append(errs, a.closeGossip())
	if a.http != nil {
		errs = append(errs, a.http.close())
	}
	errs = append(errs, a.closeCache(), a.devs.Close())
	return errors.Join(errs...)
}
