package fleetsim

import (
	"fmt"
	"slices"

	"github.com/hearth-gpu/hearth/coordinator/scheduler"
)

// PolicyNames are the policies a run compares by default, hearth's first.
var PolicyNames = []string{"hearth", "hearth-v1", "least-loaded", "swarmui", "ray-multiplex", "round-robin", "random"}

// NewPolicy returns the named policy on clock; seed feeds the random one.
func NewPolicy(name string, clock scheduler.Clock, seed uint64) (scheduler.Policy, error) {
	switch name {
	case "hearth":
		return scheduler.New(scheduler.Config{Clock: clock}), nil
	case "hearth-v1":
		return &scheduler.V1{Clock: clock}, nil
	case "least-loaded":
		return &scheduler.LeastLoaded{Clock: clock}, nil
	case "swarmui":
		return &scheduler.SwarmUI{Clock: clock}, nil
	case "ray-multiplex":
		return &scheduler.RayMultiplex{Clock: clock}, nil
	case "round-robin":
		return &scheduler.RoundRobin{Clock: clock}, nil
	case "random":
		return scheduler.NewRandom(clock, seed), nil
	}
	return nil, fmt.Errorf("fleetsim: unknown policy %q (known: %v)", name, PolicyNames)
}

// Scenario is a fleet and the trace it is fed.
type Scenario struct {
	Name  string
	Spec  Spec
	Trace *Trace
}

// TraceScenario is a scenario of a recorded trace on spec. Unless spec
// sets one, its warm-up is the first tenth of the trace's arrivals, as in
// the standard scenarios, so a generated trace written out and read back
// measures the same jobs.
func TraceScenario(name string, spec Spec, tr *Trace) Scenario {
	if spec.Warmup == 0 && len(tr.Jobs) > 0 {
		spec.Warmup = tr.Jobs[len(tr.Jobs)-1].At / 10
	}
	return Scenario{Name: name, Spec: spec, Trace: tr}
}

// RunScenario runs every named policy on sc, one after the other, and
// returns their results in the order given.
func RunScenario(sc Scenario, policies []string, seed uint64) ([]*Result, error) {
	bound := WarmBound(sc.Trace, sc.Spec.Warmup)
	vram, err := UnlimitedVRAMBound(sc)
	if err != nil {
		return nil, err
	}
	var out []*Result
	for _, name := range policies {
		if _, err := NewPolicy(name, nil, seed); err != nil {
			return nil, err
		}
		r, err := Run(sc.Spec, sc.Trace, func(c scheduler.Clock) scheduler.Policy {
			p, _ := NewPolicy(name, c, seed)
			return p
		})
		if err != nil {
			return nil, fmt.Errorf("fleetsim: scenario %s, policy %s: %w", sc.Name, name, err)
		}
		r.Scenario, r.WarmBound, r.WarmBoundVRAM = sc.Name, bound, vram
		out = append(out, r)
	}
	return out, nil
}

// UnlimitedVRAMBound is the warm-start rate hearth's policy reaches on sc's
// trace when each host's VRAM is unlimited and shared by its slots: a job
// starts warm wherever its host has loaded its models once. It does not
// warm ahead of jobs, so every cold start it counts is a first load on
// some host.
func UnlimitedVRAMBound(sc Scenario) (float64, error) {
	sp := sc.Spec
	sp.UnlimitedVRAM = true
	r, err := Run(sp, sc.Trace, func(c scheduler.Clock) scheduler.Policy {
		return scheduler.New(scheduler.Config{Clock: c, WarmModels: -1})
	})
	if err != nil {
		return 0, fmt.Errorf("fleetsim: scenario %s, unlimited VRAM: %w", sc.Name, err)
	}
	return r.WarmRate, nil
}

// WarmBound is the best warm-start rate any policy could reach on trace:
// a job can find its models in VRAM unless it names one that no job
// before it named, since a model's first use must load it. Jobs arriving
// before warmup are not counted, as in the metrics.
func WarmBound(trace *Trace, warmup float64) float64 {
	seen := make(map[string]bool)
	warm, n := 0, 0
	for _, j := range trace.Jobs {
		first := false
		for _, m := range j.Models {
			if !seen[m] {
				first, seen[m] = true, true
			}
		}
		if j.At < warmup {
			continue
		}
		n++
		if !first {
			warm++
		}
	}
	if n == 0 {
		return 0
	}
	return float64(warm) / float64(n)
}

// Options describe a standard comparison: the three workloads on fleets of
// each size, every policy on each.
type Options struct {
	Hosts     []int
	Workloads []string // names from StandardWorkloads; empty: all
	Policies  []string // empty: PolicyNames
	// Duration is the seconds of arrivals; Utilization the share of the
	// fleet's GPU time the arrivals ask for.
	Duration    float64
	Utilization float64
	Seed        uint64
	// Spec adjusts the reference fleet of n hosts (nil: DefaultSpec).
	Spec func(n int) Spec
}

// StandardScenarios generates the traces of o: for each fleet size, each
// standard workload at the rate that asks for o.Utilization of its GPUs.
func StandardScenarios(o Options) ([]Scenario, error) {
	if o.Duration <= 0 || o.Utilization <= 0 || o.Utilization > 1.5 {
		return nil, fmt.Errorf("fleetsim: duration must be positive and utilization in (0, 1.5]")
	}
	specOf := o.Spec
	if specOf == nil {
		specOf = DefaultSpec
	}
	var out []Scenario
	for _, n := range o.Hosts {
		sp := specOf(n)
		if sp.Warmup == 0 {
			sp.Warmup = o.Duration / 10
		}
		probe := StandardWorkloads(1, o.Duration, o.Seed)
		rate := o.Utilization * float64(sp.Hosts*sp.GPUsPerHost) / probe[0].MeanRunS()
		for _, w := range StandardWorkloads(rate, o.Duration, o.Seed) {
			if len(o.Workloads) > 0 && !slices.Contains(o.Workloads, w.Name) {
				continue
			}
			tr, err := Generate(w)
			if err != nil {
				return nil, err
			}
			out = append(out, Scenario{Name: w.Name, Spec: sp, Trace: tr})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("fleetsim: no scenario matches %v", o.Workloads)
	}
	return out, nil
}
