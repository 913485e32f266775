// Package hbbench measures what agents' heartbeats cost a coordinator
// leader: it starts a real coordinator as its own process, registers
// simulated GPU hosts through the agent API, heartbeats every one of them
// once per interval over keep-alive HTTP connections, and reads the
// coordinator's CPU time and the bytes it was sent. It runs the older
// protocol (every beat carries the whole cache inventory) and the current
// one (beats carry inventory changes, proto.InventoryDelta) one after the
// other, each against a fresh coordinator, so one invocation prints both.
//
// The load generator shares the machine with the coordinator; Result says
// how much CPU each used, so a reader can tell whether the generator
// starved the coordinator (or the other way round).
package hbbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
)

// Mode is which protocol the simulated agents speak.
type Mode string

const (
	// ModeFull sends the whole inventory in Heartbeat.Cache every beat,
	// as agents did before inventory deltas.
	ModeFull Mode = "full"
	// ModeDelta sends proto.InventoryDelta: the whole inventory once,
	// then only changes, and nothing while nothing changes.
	ModeDelta Mode = "delta"
)

// Config says what to simulate. Zero fields take the defaults in brackets.
type Config struct {
	Hosts    int           // simulated hosts [10,000]
	Interval time.Duration // each host's heartbeat interval [2 s]
	Duration time.Duration // the measured window per mode [30 s]
	// Warmup runs after the last host registered and before the window,
	// so the window sees the steady state (in delta mode: every host's
	// whole inventory already sent) [3 intervals]. The window also waits
	// until every host had a beat answered, at most a minute.
	Warmup     time.Duration
	Blobs      int     // cached blobs per host [200]
	Catalog    int     // distinct models the blobs are drawn from [500]
	ChangeRate float64 // share of hosts that change one blob per interval [0.01]; negative for none
	Conns      int     // most HTTP connections (and sending goroutines) at once [256]
	Registrars int     // concurrent registrations [32]
	Seed       int64   // for the fleet's contents [1]
	Modes      []Mode  // [full, delta]
	// Command starts the coordinator; hbbench appends --data-dir,
	// --http-addr, --raft-addr, --bootstrap and --log-level [this
	// executable, "coordinator": the hearth binary].
	Command []string
	// CoordinatorArgs are appended after those.
	CoordinatorArgs []string
	// Logf reports progress; nil is quiet.
	Logf func(format string, args ...any)
}

// Result is one invocation's measurements.
type Result struct {
	// CPUs is how many CPUs this machine has, for the coordinator and
	// the load generator together.
	CPUs int
	Runs []ModeResult
}

// ModeResult is one mode's measurements over its window.
type ModeResult struct {
	Mode     Mode
	Hosts    int
	Interval time.Duration
	Window   time.Duration // as measured
	// Register is how long registering every host took.
	Register time.Duration
	// Beats were answered within the window; WantPerS is what the schedule
	// asked for (hosts per interval); Skipped beats came due while the
	// host's previous one was still unanswered, and were not sent.
	Beats, Skipped int64
	BeatsPerS      float64
	WantPerS       float64
	Errors         int64 // failed requests and non-200 answers in the window
	// InventoryBeats carried a cache inventory part (a whole inventory
	// or a change: every beat in full mode), FullInventories a whole one.
	InventoryBeats, FullInventories int64
	// RequestBytes were written to the coordinator in the window:
	// request lines, headers and bodies, counted on the connections.
	RequestBytes int64
	MBPerS       float64 // RequestBytes per second, in 10^6 bytes
	BeatBytes    float64 // RequestBytes per beat
	// LeaderCores is the coordinator process's CPU time (user+system)
	// over the window, divided by the window: 1.0 is one core busy.
	LeaderCores float64
	// LeaderCPUPerBeat is the coordinator's CPU time per answered beat:
	// comparable between runs that did not reach the same rate.
	LeaderCPUPerBeat time.Duration
	// GeneratorCores is the same for this process, the load generator.
	GeneratorCores float64
	// MachineCores is the whole machine's busy CPU time (everything but
	// idle and I/O wait, the kernel's network work included) over the
	// window: how close the run came to CPUs.
	MachineCores float64
	// LeaderRSS is the coordinator's resident memory at the window's end.
	LeaderRSS     int64
	P50, P99, Max time.Duration // heartbeat round trips in the window
}

func (c *Config) fillDefaults() error {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Hosts, 10_000)
	def(&c.Blobs, 200)
	def(&c.Catalog, 500)
	def(&c.Conns, 256)
	def(&c.Registrars, 32)
	if c.Interval == 0 {
		c.Interval = 2 * time.Second
	}
	if c.Duration == 0 {
		c.Duration = 30 * time.Second
	}
	if c.Warmup == 0 {
		c.Warmup = 3 * c.Interval
	}
	if c.ChangeRate == 0 {
		c.ChangeRate = 0.01
	}
	c.ChangeRate = max(c.ChangeRate, 0)
	if c.Seed == 0 {
		c.Seed = 1
	}
	if len(c.Modes) == 0 {
		c.Modes = []Mode{ModeFull, ModeDelta}
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if len(c.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("hbbench: find the hearth binary: %w", err)
		}
		c.Command = []string{exe, "coordinator"}
	}
	switch {
	case c.Hosts < 1 || c.Hosts > 1_000_000:
		return fmt.Errorf("hbbench: %d hosts; want 1 to 1,000,000", c.Hosts)
	case c.Interval <= 0 || c.Duration <= 0 || c.Warmup < 0:
		return errors.New("hbbench: interval and duration must be positive, warmup not negative")
	case c.Catalog < 1 || c.Catalog > 65_535 || c.Blobs < 1 || c.Blobs > c.Catalog:
		return fmt.Errorf("hbbench: %d blobs per host from a catalog of %d; want 1 ≤ blobs ≤ catalog ≤ 65,535", c.Blobs, c.Catalog)
	case c.ChangeRate > 1:
		return fmt.Errorf("hbbench: change rate %g is above 1", c.ChangeRate)
	case c.Conns < 1 || c.Registrars < 1:
		return errors.New("hbbench: conns and registrars must be at least 1")
	}
	for _, m := range c.Modes {
		if m != ModeFull && m != ModeDelta {
			return fmt.Errorf("hbbench: mode %q; want %q or %q", m, ModeFull, ModeDelta)
		}
	}
	return nil
}

// Run measures each of cfg's modes in turn, each against a coordinator
// process of its own that it stops before returning, failed or not.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.fillDefaults(); err != nil {
		return Result{}, err
	}
	res := Result{CPUs: runtime.NumCPU()}
	for _, m := range cfg.Modes {
		r, err := runMode(ctx, &cfg, m)
		if err != nil {
			return res, fmt.Errorf("hbbench: %s mode: %w", m, err)
		}
		res.Runs = append(res.Runs, r)
	}
	return res, nil
}

func runMode(ctx context.Context, cfg *Config, mode Mode) (ModeResult, error) {
	coord, err := startCoordinator(ctx, cfg)
	if err != nil {
		return ModeResult{}, err
	}
	defer coord.stop()
	cfg.Logf("%s mode: coordinator pid %d at %s", mode, coord.pid(), coord.url)
	fl := newFleet(cfg, mode)
	ld := newLoad(cfg, fl, coord.url)
	defer ld.stop()
	ld.start()

	run := ModeResult{Mode: mode, Hosts: cfg.Hosts, Interval: cfg.Interval, WantPerS: float64(cfg.Hosts) / cfg.Interval.Seconds()}
	t0 := time.Now()
	if err := registerAll(ctx, cfg, fl, coord); err != nil {
		return run, err
	}
	run.Register = time.Since(t0)
	cfg.Logf("%s mode: %d hosts registered in %s; warming up %s", mode, cfg.Hosts, run.Register.Round(time.Millisecond), cfg.Warmup)
	if err := sleepCtx(ctx, cfg.Warmup); err != nil {
		return run, err
	}
	if err := ld.waitSynced(ctx, time.Minute); err != nil {
		return run, err
	}
	if err := coord.alive(); err != nil {
		return run, err
	}

	before, err := ld.snapshot(coord)
	if err != nil {
		return run, err
	}
	cfg.Logf("%s mode: measuring for %s", mode, cfg.Duration)
	if err := sleepCtx(ctx, cfg.Duration); err != nil {
		return run, err
	}
	after, err := ld.snapshot(coord)
	if err != nil {
		return run, err
	}
	ld.stop()
	run.LeaderRSS = coord.rss()
	after.fill(&run, before, ld.latencies(before.at, after.at))
	return run, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
