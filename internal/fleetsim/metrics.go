package fleetsim

import (
	"math"
	"slices"
	"time"
)

// Result is what one policy did with one trace.
type Result struct {
	Scenario string `json:"scenario"`
	Hosts    int    `json:"hosts"`
	Policy   string `json:"policy"`
	// Jobs counts the measured jobs (arrived after the warm-up), Finished
	// those of them that ended within the simulated horizon.
	Jobs     int `json:"jobs"`
	Finished int `json:"finished"`
	// WarmRate is the share of finished jobs whose every model was in
	// its slot's VRAM when the job's turn came.
	WarmRate float64 `json:"warm_start_rate"`
	// MainWarmRate is the share whose checkpoint (the model a job names
	// first, and its largest) was in VRAM, LoRAs and VAEs aside.
	MainWarmRate float64 `json:"checkpoint_warm_rate"`
	// TTS is the time to start (queue wait and load, arrival to run) and
	// Latency arrival to finish, in seconds.
	TTSP50     float64 `json:"tts_p50_s"`
	TTSP99     float64 `json:"tts_p99_s"`
	LatencyP50 float64 `json:"latency_p50_s"`
	LatencyP99 float64 `json:"latency_p99_s"`
	// WaitP99 and LoadP99 split the time to start: arrival to the start
	// of the load on its slot, and the load itself.
	WaitP99 float64 `json:"wait_p99_s"`
	LoadP99 float64 `json:"load_p99_s"`
	// GPUBusy is the share of GPU time in the measured window with at
	// least one job running.
	GPUBusy     float64 `json:"gpu_busy"`
	OriginBytes int64   `json:"origin_bytes"`
	PeerBytes   int64   `json:"peer_bytes"`
	// SchedUSPerJob is the policy's own CPU time (wall time of its passes
	// on this machine) per job it placed, in microseconds.
	SchedUSPerJob float64 `json:"sched_us_per_job"`
	Passes        int     `json:"passes"`
	// WarmBound is the scenario's upper bound on WarmRate: every job warm
	// but those that name a model no earlier job named. WarmBoundVRAM is
	// the rate with unlimited VRAM per host (see UnlimitedVRAMBound).
	WarmBound     float64 `json:"warm_start_bound_first_load"`
	WarmBoundVRAM float64 `json:"warm_start_bound_unlimited_vram"`
}

type metrics struct {
	warm, warmMain, finished int
	tts, latency, wait, load []float64
	originBytes, peerBytes   int64
	schedWall, planWall      time.Duration
	passes, placed           int
	warmLoads                int
}

func (m *metrics) record(j *simJob) {
	if !j.measured {
		return
	}
	m.finished++
	if j.warm {
		m.warm++
	}
	if j.warmMain {
		m.warmMain++
	}
	m.tts = append(m.tts, j.runStart-j.arrive)
	m.latency = append(m.latency, j.finish-j.arrive)
	m.wait = append(m.wait, j.loadStart-j.arrive)
	m.load = append(m.load, j.runStart-j.loadStart)
}

func (s *sim) result() *Result {
	r := &Result{Hosts: s.spec.Hosts, Policy: s.policy.Name(), Finished: s.m.finished,
		OriginBytes: s.m.originBytes, PeerBytes: s.m.peerBytes, Passes: s.m.passes}
	for _, j := range s.jobs {
		if j.measured {
			r.Jobs++
		}
	}
	if s.m.finished > 0 {
		r.WarmRate = float64(s.m.warm) / float64(s.m.finished)
		r.MainWarmRate = float64(s.m.warmMain) / float64(s.m.finished)
	}
	r.TTSP50, r.TTSP99 = percentile(s.m.tts, 50), percentile(s.m.tts, 99)
	r.LatencyP50, r.LatencyP99 = percentile(s.m.latency, 50), percentile(s.m.latency, 99)
	r.WaitP99, r.LoadP99 = percentile(s.m.wait, 99), percentile(s.m.load, 99)
	var busy float64
	gpus := 0
	for _, h := range s.hosts {
		for _, g := range h.gpus {
			gpus++
			busy += g.busyS
			if g.compute.active() > 0 {
				busy += overlap(g.busySince, s.now, s.spec.Warmup, s.end)
			}
		}
	}
	if window := s.end - s.spec.Warmup; window > 0 && gpus > 0 {
		r.GPUBusy = busy / (window * float64(gpus))
	}
	if s.m.placed > 0 {
		r.SchedUSPerJob = float64(s.m.schedWall.Microseconds()) / float64(s.m.placed)
	}
	return r
}

// percentile is the p-th percentile of xs by nearest rank (0 for none).
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
