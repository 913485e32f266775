package cachefs

import (
	"fmt"
	"testing"
)

// benchTraces are the traces the eviction policy was chosen on: two Zipf
// skews over a steady catalog, and popularity that drifts as new models
// are released. Each holds about 57,000 requests over an 840 GB catalog.
var benchTraces = []traceSpec{
	{name: "zipf0.8", seed: 1, jobs: 20000, warmup: 4000, skew: 0.8},
	{name: "zipf1.1", seed: 2, jobs: 20000, warmup: 4000, skew: 1.1},
	{name: "drift", seed: 3, jobs: 20000, warmup: 4000, skew: 1.0, driftEvery: 200},
}

var benchBudgets = []int64{50 * gb, 100 * gb, 200 * gb}

const benchRestartEvery = 1000

// BenchmarkEvictionPolicies replays each trace against each policy and
// budget and reports the byte-miss ratio (bytes fetched / bytes requested,
// what the cache exists to cut) and the object-miss ratio, next to LRU's on
// the same trace and budget. restart-byte-miss is the byte-miss ratio when
// the host restarts every benchRestartEvery jobs and the policy is seeded
// as Open seeds it, without use counts. The numbers are deterministic; the
// time per op is only the simulator's.
func BenchmarkEvictionPolicies(b *testing.B) {
	for _, spec := range benchTraces {
		tr := genTrace(spec)
		for _, budget := range benchBudgets {
			base, err := simulate(tr, newLRU(), budget, 0, nil)
			if err != nil {
				b.Fatalf("%s: LRU: %v", spec.name, err)
			}
			for _, sp := range simPolicies {
				b.Run(fmt.Sprintf("%s/%dGB/%s", spec.name, budget/gb, sp.name), func(b *testing.B) {
					var res simResult
					for b.Loop() {
						res, err = simulate(tr, sp.new(budget), budget, 0, nil)
						if err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(res.byteMiss(), "byte-miss")
					b.ReportMetric(base.byteMiss(), "lru-byte-miss")
					b.ReportMetric(res.objectMiss(), "obj-miss")
					b.ReportMetric(base.objectMiss(), "lru-obj-miss")
					restarted, err := simulate(tr, sp.new(budget), budget, benchRestartEvery, sp.new)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(restarted.byteMiss(), "restart-byte-miss")
				})
			}
		}
	}
}
