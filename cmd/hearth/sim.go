package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/hearth-gpu/hearth/internal/fleetsim"
)

// runSim runs the fleet simulator: the standard scenarios (or a trace)
// under every policy, side by side.
func runSim(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("sim", stderr)
	hosts := fs.String("hosts", "100", "fleet sizes to simulate, comma-separated (e.g. 100,1000)")
	scenarios := fs.String("scenarios", "steady,drift,launch", "standard workloads to run: steady (Zipf popularity), drift (popularity shifting), launch (bursts, and a new model taking 30% of jobs)")
	policies := fs.String("policies", strings.Join(fleetsim.PolicyNames, ","), "policies to compare")
	duration := fs.Float64("duration", 600, "seconds of job arrivals per scenario (the first tenth warms the fleet and is not measured)")
	util := fs.Float64("utilization", 0.7, "share of the fleet's GPU time the arrivals ask for")
	warmup := fs.Float64("warmup", 0, "seconds of arrivals left out of the metrics while the fleet warms (default: the first tenth)")
	seed := fs.Uint64("seed", 1, "seed of the generated traces and of the random policy")
	tracePath := fs.String("trace", "", "run this JSONL trace instead of the standard scenarios")
	writeTrace := fs.String("write-trace", "", "write the first generated trace to this JSONL file")
	asJSON := fs.Bool("json", false, "print one JSON object per scenario, fleet size and policy instead of tables")
	svgPath := fs.String("svg", "", "also draw the results as an SVG chart into this file")
	gpus := fs.Int("gpus", 8, "GPUs per host")
	slots := fs.Int("slots", 4, "slots per GPU")
	slotGiB := fs.Float64("slot-gib", 32, "GiB of VRAM per slot")
	ramGiB := fs.Float64("ram-gib", 256, "GiB of each host's RAM tier")
	diskGiB := fs.Float64("disk-gib", 1000, "GiB of each host's NVMe cache")
	perRack := fs.Int("hosts-per-rack", 32, "hosts per rack")
	originGBs := fs.Float64("origin-gbps", 20, "GB/s the origin serves to the whole fleet")
	noPeers := fs.Bool("no-peers", false, "hosts fetch only from the origin")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// The simulator allocates per event and keeps little: a larger heap
	// between collections costs memory it has and saves a third of the time.
	debug.SetGCPercent(400)
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	sizes, err := parseSizes(*hosts)
	if err != nil {
		return err
	}
	for name, v := range map[string]float64{"duration": *duration, "utilization": *util, "slot-gib": *slotGiB, "disk-gib": *diskGiB, "origin-gbps": *originGBs} {
		if !(v > 0) || math.IsInf(v, 0) {
			return usagef("--%s must be a positive number", name)
		}
	}
	if *warmup < 0 || math.IsNaN(*warmup) {
		return usagef("--warmup must not be negative")
	}
	if *gpus <= 0 || *slots <= 0 || *perRack <= 0 || *ramGiB < 0 {
		return usagef("--gpus, --slots and --hosts-per-rack must be positive and --ram-gib not negative")
	}
	names := splitList(*policies)
	for _, n := range names {
		if _, err := fleetsim.NewPolicy(n, nil, 0); err != nil {
			return usagef("--policies: unknown policy %q (known: %s)", n, strings.Join(fleetsim.PolicyNames, ", "))
		}
	}
	spec := func(n int) fleetsim.Spec {
		sp := fleetsim.DefaultSpec(n)
		sp.GPUsPerHost, sp.SlotsPerGPU, sp.HostsPerRack = *gpus, *slots, *perRack
		sp.SlotBytes = int64(*slotGiB * (1 << 30))
		sp.RAMBytes, sp.DiskBytes = int64(*ramGiB*(1<<30)), int64(*diskGiB*(1<<30))
		sp.OriginTotal = *originGBs * 1e9
		sp.PeerFetch = !*noPeers
		sp.Warmup = *warmup
		return sp
	}
	var scs []fleetsim.Scenario
	if *tracePath != "" {
		f, err := os.Open(*tracePath)
		if err != nil {
			return usagef("--trace: %v", err)
		}
		tr, err := fleetsim.ReadJSONL(f)
		f.Close()
		if err != nil {
			return usagef("--trace %s: %v", *tracePath, err)
		}
		for _, n := range sizes {
			scs = append(scs, fleetsim.TraceScenario("trace", spec(n), tr))
		}
	} else {
		scs, err = fleetsim.StandardScenarios(fleetsim.Options{Hosts: sizes, Workloads: splitList(*scenarios),
			Duration: *duration, Utilization: *util, Seed: *seed, Spec: spec})
		if err != nil {
			return usagef("%v", err)
		}
	}
	if *writeTrace != "" {
		f, err := os.Create(*writeTrace)
		if err != nil {
			return err
		}
		err = scs[0].Trace.WriteJSONL(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write trace: %w", err)
		}
	}
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "policies" })
	var all []*fleetsim.Result
	for _, sc := range scs {
		run := names
		if !explicit && sc.Spec.Hosts > maxV1Hosts {
			// hearth-v1 scores every slot for every job: hours at
			// this size. It runs when asked for by name.
			run = slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == "hearth-v1" })
		}
		fmt.Fprintf(stderr, "simulating %s on %d hosts: %d jobs, %d policies\n", sc.Name, sc.Spec.Hosts, len(sc.Trace.Jobs), len(run))
		rs, err := fleetsim.RunScenario(sc, run, *seed)
		if err != nil {
			return err
		}
		all = append(all, rs...)
		if !*asJSON {
			if err := fleetsim.WriteTable(stdout, rs); err != nil {
				return err
			}
		}
	}
	if *asJSON {
		if err := fleetsim.WriteJSON(stdout, all); err != nil {
			return err
		}
	}
	if *svgPath != "" {
		f, err := os.Create(*svgPath)
		if err != nil {
			return err
		}
		err = fleetsim.WriteSVG(f, all)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return nil
}

// maxV1Hosts is the largest fleet the default run simulates hearth-v1 on.
const maxV1Hosts = 200

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, p := range splitList(s) {
		n, err := strconv.Atoi(p)
		if err != nil || n <= 0 || n > 100000 {
			return nil, usagef("--hosts: %q is not a fleet size between 1 and 100000", p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, usagef("--hosts needs at least one fleet size")
	}
	return out, nil
}
