package coordinator

import (
	"strconv"
	"strings"
	"sync"

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
	queueDepth *prometheus.GaugeVec
	raftLeader prometheus.Gauge

	commitSecs  *prometheus.HistogramVec
	applySecs   *prometheus.HistogramVec
	batchSize   prometheus.Histogram
	forwarded   prometheus.Histogram
	webhooks    *prometheus.CounterVec
	webhookSecs prometheus.Histogram
	hostsDown   prometheus.Counter
	requeued    prometheus.Counter
	passSecs    prometheus.Histogram

	depthMu     sync.Mutex
	depthLabels map[int]bool // priorities with a gauge, so emptied ones read 0
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
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hearth_queue_depth", Help: "Queued jobs by priority, as the last scheduling pass saw them (leader only).",
		}, []string{"priority"}),
		commitSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hearth_raft_commit_seconds",
			Help:    "Time from proposing a command to its apply on this leader, by command type.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}, []string{"command"}),
		applySecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "hearth_fsm_apply_seconds",
			Help:    "Time to decode and apply one Raft entry to the FSM on this node, by command type.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 2, 16),
		}, []string{"command"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hearth_submit_batch_jobs", Help: "Jobs per SubmitJobs entry (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
		forwarded: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hearth_forwarded_seconds", Help: "Requests this node forwarded to the leader, by round-trip time.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_webhook_attempts_total", Help: "Webhook delivery attempts by outcome: delivered, retry (will try again), failed (gave up).",
		}, []string{"outcome"}),
		webhookSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hearth_webhook_attempt_seconds", Help: "Duration of webhook delivery attempts.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		hostsDown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hearth_hosts_marked_down_total", Help: "Hosts this leader marked down for missed heartbeats.",
		}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hearth_jobs_requeued_total", Help: "Jobs requeued because their host went down.",
		}),
		passSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hearth_scheduler_pass_seconds", Help: "Time of scheduling passes that had something to decide (leader only).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16),
		}),
		depthLabels: make(map[int]bool),
		raftLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hearth_raft_leader", Help: "1 if this node is the Raft leader.",
		}),
	}
	m.reg.MustRegister(m.submitted, m.acceptSecs, m.placements, m.queueDepth, m.raftLeader,
		m.commitSecs, m.applySecs, m.batchSize, m.forwarded, m.webhooks, m.webhookSecs, m.hostsDown, m.requeued, m.passSecs,
		&raftCollector{s: s},
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

func (m *metrics) setQueueDepth(depth map[int]int) {
	m.depthMu.Lock()
	defer m.depthMu.Unlock()
	for p := range depth {
		m.depthLabels[p] = true
	}
	for p := range m.depthLabels {
		m.queueDepth.WithLabelValues(strconv.Itoa(p)).Set(float64(depth[p]))
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

// raftCollector exports Raft's own counters (its Stats) at scrape time.
type raftCollector struct{ s *Server }

var raftStatDescs = map[string]*prometheus.Desc{
	"term":                prometheus.NewDesc("hearth_raft_term", "Current Raft term.", nil, nil),
	"last_log_index":      prometheus.NewDesc("hearth_raft_last_log_index", "Last index in this node's Raft log.", nil, nil),
	"commit_index":        prometheus.NewDesc("hearth_raft_commit_index", "Last index known committed.", nil, nil),
	"fsm_pending":         prometheus.NewDesc("hearth_raft_fsm_pending", "Committed entries waiting to be applied.", nil, nil),
	"num_peers":           prometheus.NewDesc("hearth_raft_peers", "Other voters in the configuration.", nil, nil),
	"last_snapshot_index": prometheus.NewDesc("hearth_raft_last_snapshot_index", "Index of the last snapshot.", nil, nil),
}

var raftStateDesc = prometheus.NewDesc("hearth_raft_state", "1 for this node's Raft state.", []string{"state"}, nil)

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range raftStatDescs {
		ch <- d
	}
	ch <- raftStateDesc
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.raft.raft.Stats()
	for k, d := range raftStatDescs {
		if v, err := strconv.ParseFloat(st[k], 64); err == nil {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
		}
	}
	ch <- prometheus.MustNewConstMetric(raftStateDesc, prometheus.GaugeValue, 1, strings.ToLower(st["state"]))
}
