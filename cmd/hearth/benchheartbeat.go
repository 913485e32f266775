package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hearth-gpu/hearth/internal/hbbench"
)

// runBenchHeartbeat runs "bench heartbeat": the leader's CPU and the bytes
// it receives for a fleet of simulated agents heartbeating at a fixed
// interval, with whole inventories in every beat (the older protocol) and
// with inventory changes, against a coordinator process of this binary.
func runBenchHeartbeat(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench heartbeat", stderr)
	var cfg hbbench.Config
	fs.IntVar(&cfg.Hosts, "hosts", 10_000, "simulated hosts")
	fs.DurationVar(&cfg.Interval, "interval", 2*time.Second, "each host's heartbeat interval")
	fs.DurationVar(&cfg.Duration, "duration", 30*time.Second, "measured window per mode")
	fs.DurationVar(&cfg.Warmup, "warmup", 0, "heartbeats before the window, after the last registration (default 3 intervals)")
	fs.IntVar(&cfg.Blobs, "blobs", 200, "cached blobs per host")
	fs.IntVar(&cfg.Catalog, "catalog", 500, "distinct models the cached blobs are drawn from")
	fs.Float64Var(&cfg.ChangeRate, "change-rate", 0.01, "share of hosts whose cache changes by one blob per interval")
	fs.IntVar(&cfg.Conns, "conns", 256, "most HTTP connections to the coordinator at once")
	modes := fs.String("modes", "full,delta", "protocols to run, in order: full (whole Cache list in every beat), delta (inventory changes)")
	bin := fs.String("coordinator-bin", "", "hearth binary that runs the coordinator (default: this one), to compare builds")
	quiet := fs.Bool("quiet", false, "no progress on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, m := range strings.Split(*modes, ",") {
		cfg.Modes = append(cfg.Modes, hbbench.Mode(strings.TrimSpace(m)))
	}
	if *bin != "" {
		cfg.Command = []string{*bin, "coordinator"}
	}
	if !*quiet {
		cfg.Logf = func(format string, a ...any) {
			fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := hbbench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "heartbeat load: %d simulated hosts (8 GPUs × 4 slots, one model resident per slot, %d cached blobs from %d models), one beat per host every %s, %s measured per mode; %.0f%% of hosts change one cached blob per interval\n",
		cfg.Hosts, cfg.Blobs, cfg.Catalog, cfg.Interval, cfg.Duration, 100*cfg.ChangeRate)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\thosts\tinterval\tbeats/s\t(wanted)\tbytes/beat\tMB/s\tleader cores\tleader µs/beat\tleader RSS MiB\tp50 ms\tp99 ms\terrors\tgenerator cores\tmachine busy cores\t")
	for _, r := range res.Runs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.0f\t%.0f\t%.2f\t%.2f\t%d\t%.2f\t%.2f\t\n",
			r.Mode, r.Hosts, r.Interval, r.BeatsPerS, r.WantPerS, r.BeatBytes, r.MBPerS, r.LeaderCores,
			float64(r.LeaderCPUPerBeat)/float64(time.Microsecond), float64(r.LeaderRSS)/(1<<20), ms(r.P50), ms(r.P99), r.Errors, r.GeneratorCores, r.MachineCores)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "the coordinator (a separate process) and this load generator share this machine's %d CPUs; leader cores is the coordinator's CPU time over the window, generator cores this process's, machine busy cores all of the machine's (the kernel's loopback networking included)\n", res.CPUs)
	for _, r := range res.Runs {
		if other := r.MachineCores - r.LeaderCores - r.GeneratorCores; other > 0.25 {
			fmt.Fprintf(stdout, "%s mode: something else kept about %.2f cores busy during the window (other processes, or kernel work not charged to either process); its figures are not clean\n", r.Mode, other)
		}
		if r.BeatsPerS < 0.95*r.WantPerS {
			fmt.Fprintf(stdout, "%s mode did not keep up: %.0f of the %.0f beats/s wanted (%d turns skipped because a host's previous beat was unanswered; the rest queued behind busy connections)\n", r.Mode, r.BeatsPerS, r.WantPerS, r.Skipped)
		}
	}
	fmt.Fprintln(stdout, "bytes are what the coordinator was sent (request lines, headers and bodies, counted on the connections); full: every beat carries the whole cache list; delta: beats carry inventory changes only")
	return nil
}
