package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/hearth-gpu/hearth/proto"
)

// metrics is the node's Prometheus registry. Each Server has its own, so
// several nodes can run in one test process.
type metrics struct {
	reg        *prometheus.Registry
	submitted  prometheus.Counter
	acceptSecs prometheus.Histogram
	placements *prometheus.CounterVec
	queueDepth prometheus.Gauge
	raftLeader prometheus.Gauge
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		submitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hearth_jobs_submitted_total", Help: "Jobs accepted (answered 202).",
		}),
		acceptSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hearth_job_accept_seconds",
			Help:    "Time from receiving a submit to answering 202, Raft commit included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_model_placements_total", Help: "Models of placed jobs, by the tier they were in on the chosen slot.",
		}, []string{"tier"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hearth_queue_depth", Help: "Queued jobs seen by the last scheduling pass (leader only).",
		}),
		raftLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hearth_raft_leader", Help: "1 if this node is the Raft leader.",
		}),
	}
	m.reg.MustRegister(m.submitted, m.acceptSecs, m.placements, m.queueDepth, m.raftLeader,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hearth_raft_applied_index", Help: "Last Raft index applied to the FSM.",
		}, func() float64 { return float64(s.fsm.Index()) }),
		&jobStateCollector{fsm: s.fsm, desc: prometheus.NewDesc("hearth_jobs", "Jobs in the FSM by state.", []string{"state"}, nil)},
	)
	return m
}

func (m *metrics) observePlacement(p *proto.Placement) {
	for _, mp := range p.Models {
		m.placements.WithLabelValues(string(mp.Tier)).Inc()
	}
}

func (m *metrics) setRaftState(leader bool) {
	if leader {
		m.raftLeader.Set(1)
	} else {
		m.raftLeader.Set(0)
	}
}

// jobStateCollector reads job counts at scrape time instead of keeping a
// gauge in step with every Apply.
type jobStateCollector struct {
	fsm  *FSM
	desc *prometheus.Desc
}

func (c *jobStateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *jobStateCollector) Collect(ch chan<- prometheus.Metric) {
	for state, n := range c.fsm.Counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(state))
	}
}
