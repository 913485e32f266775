package cachefs

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the cache's Prometheus series. One Metrics serves a Store and
// its RAM tier; the series carry the tier as a label ("ram", "disk"), so a
// dashboard can put the two side by side. A nil *Metrics records nothing,
// which keeps tests and tools that do not export metrics free of them.
type Metrics struct {
	hits      *prometheus.CounterVec
	misses    *prometheus.CounterVec
	evictions *prometheus.CounterVec
	evicted   *prometheus.CounterVec
	bytesIn   *prometheus.CounterVec
	bytesOut  *prometheus.CounterVec
	fetchSecs *prometheus.HistogramVec
	failures  *prometheus.CounterVec
	sources   *prometheus.CounterVec
	peerFails *prometheus.CounterVec
	usage     *usageCollector
}

// NewMetrics creates the cache's series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	tier := []string{"tier"}
	m := &Metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_hits_total", Help: "Lookups that found the blob in the tier.",
		}, tier),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_misses_total", Help: "Lookups that did not find the blob in the tier.",
		}, tier),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_evictions_total", Help: "Blobs that left the tier to make room (for ram: demoted to disk).",
		}, tier),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_evicted_bytes_total", Help: "Bytes of the blobs that left the tier to make room.",
		}, tier),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_bytes_in_total", Help: "Bytes brought into the tier (for disk: verified downloads and puts; for ram: promotions).",
		}, tier),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_bytes_out_total", Help: "Bytes handed out of the tier to jobs.",
		}, tier),
		fetchSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hearth_cache_fetch_seconds",
			Help:    "Time to bring a missing blob into the tier (disk: from the origin, ram: from disk), verified.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 14), // 10 ms to about 15 min
		}, []string{"tier", "source"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_fetch_failures_total", Help: "Fetches and promotions that failed, by reason.",
		}, []string{"tier", "reason"}),
		sources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cache_fetched_bytes_total", Help: "Verified bytes fetched into the cache, by source: peer (another host of the pool) or origin.",
		}, []string{"source"}),
		peerFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_peer_chunk_failures_total", Help: "Chunks a peer failed to deliver (broke off, bad bytes), by peer and reason; the peer is avoided for a while.",
		}, []string{"peer", "reason"}),
		usage: &usageCollector{
			used:   prometheus.NewDesc("hearth_cache_used_bytes", "Bytes held in the tier.", tier, nil),
			budget: prometheus.NewDesc("hearth_cache_budget_bytes", "The tier's byte budget (0: unlimited).", tier, nil),
		},
	}
	reg.MustRegister(m.hits, m.misses, m.evictions, m.evicted, m.bytesIn, m.bytesOut, m.fetchSecs, m.failures, m.sources, m.peerFails, m.usage)
	return m
}

// usageCollector reads each tier's usage when scraped, so the gauges can
// never drift from the index they describe.
type usageCollector struct {
	used, budget *prometheus.Desc
	mu           sync.Mutex
	tiers        map[string]func() (used, max int64)
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.used; ch <- c.budget }

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for tier, f := range c.tiers {
		used, max := f()
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(used), tier)
		ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(max), tier)
	}
}

// watch makes usage (a Store's or a RAM tier's Usage) the source of the
// tier's gauges.
func (m *Metrics) watch(tier string, usage func() (used, max int64)) {
	if m == nil {
		return
	}
	m.usage.mu.Lock()
	defer m.usage.mu.Unlock()
	if m.usage.tiers == nil {
		m.usage.tiers = make(map[string]func() (int64, int64))
	}
	m.usage.tiers[tier] = usage
}

// Tier labels.
const (
	tierRAM  = "ram"
	tierDisk = "disk"
)

func (m *Metrics) lookup(tier string, hit bool) {
	if m == nil {
		return
	}
	if hit {
		m.hits.WithLabelValues(tier).Inc()
	} else {
		m.misses.WithLabelValues(tier).Inc()
	}
}

func (m *Metrics) eviction(tier string, n int, size int64) {
	if m == nil || n == 0 {
		return
	}
	m.evictions.WithLabelValues(tier).Add(float64(n))
	m.evicted.WithLabelValues(tier).Add(float64(size))
}

func (m *Metrics) fetched(tier, source string, size int64, took time.Duration) {
	if m == nil {
		return
	}
	m.bytesIn.WithLabelValues(tier).Add(float64(size))
	m.fetchSecs.WithLabelValues(tier, source).Observe(took.Seconds())
}

func (m *Metrics) failed(tier, reason string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(tier, reason).Inc()
}

func (m *Metrics) served(tier string, size int64) {
	if m == nil {
		return
	}
	m.bytesOut.WithLabelValues(tier).Add(float64(size))
}

func (m *Metrics) fromSource(source string, n int64) {
	if m == nil {
		return
	}
	m.sources.WithLabelValues(source).Add(float64(n))
}

func (m *Metrics) peerChunkFailed(peer, reason string) {
	if m == nil {
		return
	}
	m.peerFails.WithLabelValues(peer, reason).Inc()
}
