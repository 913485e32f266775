package fleetsim

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/coordinator/scheduler"
	"github.com/hearth-gpu/hearth/proto"
)

// Spec is the simulated fleet.
type Spec struct {
	Hosts        int
	GPUsPerHost  int
	SlotsPerGPU  int
	SlotBytes    int64
	HostsPerRack int
	// RAMBytes and DiskBytes are each host's RAM tier and NVMe cache.
	RAMBytes  int64
	DiskBytes int64
	// Bandwidth is bytes/s from each tier into a worker: ram (a
	// safetensors load from host memory), disk (a host's NVMe, shared by
	// its concurrent reads), rack and peer (one peer transfer), origin (a
	// host's link to the object store).
	Bandwidth map[proto.Tier]float64
	// OriginTotal is what the object store serves to the whole fleet,
	// shared by every download at once.
	OriginTotal float64
	// PeerFetch lets hosts fetch from each other before the origin.
	PeerFetch bool
	// Warmup leaves the jobs that arrive in its first seconds out of the
	// metrics, while the fleet's VRAM and RAM fill.
	Warmup float64
	// UnlimitedVRAM gives each host VRAM without limit, shared by its
	// slots: a model any slot of a host loaded stays warm for all of them.
	// It is the fleet of the warm-start bound, not a real one.
	UnlimitedVRAM bool
	// Preload fills every host's disk before the first job, as a fleet
	// that has been running would have it: the models the warm-up asks
	// for, most asked first, then the rest of the catalog, while they
	// fit. Without it every cache starts empty and the first minutes
	// are a stampede on the origin.
	Preload bool
}

// Reference figures: an H200 host (DESIGN.md) of 8 GPUs, each with 141 GB
// cut into four 32 GiB slots (the rest for the driver and activations); a
// 25 GbE rack, 10 GbE between racks and to an object store that serves
// 20 GB/s in all.
const gib = int64(1) << 30

// DefaultSpec returns the reference fleet of n hosts.
func DefaultSpec(n int) Spec {
	return Spec{
		Hosts: n, GPUsPerHost: 8, SlotsPerGPU: 4, SlotBytes: 32 * gib, HostsPerRack: 32,
		RAMBytes: 256 * gib, DiskBytes: 1000 * gib,
		Bandwidth: map[proto.Tier]float64{
			proto.TierRAM: 4.9 * gb, proto.TierDisk: 1.5 * gb, proto.TierRack: 2.4 * gb,
			proto.TierPeer: 1.1 * gb, proto.TierOrigin: 1.1 * gb,
		},
		OriginTotal: 20 * gb,
		PeerFetch:   true,
		Preload:     true,
	}
}

func (sp *Spec) validate() error {
	if sp.Hosts <= 0 || sp.GPUsPerHost <= 0 || sp.SlotsPerGPU <= 0 || sp.SlotBytes <= 0 || sp.HostsPerRack <= 0 {
		return fmt.Errorf("fleetsim: hosts, GPUs per host, slots per GPU, slot size and hosts per rack must be positive")
	}
	if sp.RAMBytes < 0 || sp.DiskBytes <= 0 || sp.OriginTotal <= 0 {
		return fmt.Errorf("fleetsim: RAM must not be negative, disk and the origin's bandwidth must be positive")
	}
	for _, t := range []proto.Tier{proto.TierRAM, proto.TierDisk, proto.TierRack, proto.TierPeer, proto.TierOrigin} {
		if sp.Bandwidth[t] <= 0 || math.IsNaN(sp.Bandwidth[t]) {
			return fmt.Errorf("fleetsim: bandwidth of tier %s must be positive", t)
		}
	}
	return nil
}

// simJob is a trace job on its way through the fleet.
type simJob struct {
	tj     *Job
	pj     *proto.Job
	models []*model
	slot   *simSlot
	// Simulated times, in seconds since the start.
	arrive, placed, loadStart, runStart, finish float64
	warm                                        bool
	warmMain                                    bool // its checkpoint (first model) was warm
	// warmAfter is what the policy asked the slot to load once the job is
	// done, if no other job waits for it.
	warmAfter []*model
	done      bool
	measured  bool // arrived after the warm-up
}

// sim is one run of one policy over one trace.
type sim struct {
	spec   Spec
	q      events
	now    float64
	base   time.Time
	fleet  *scheduler.Fleet
	policy scheduler.Policy

	hosts    []*simHost
	byHost   map[string]*simHost
	models   map[string]*model
	byDigest map[proto.Digest]*model
	jobs     []*simJob
	byID     map[string]*simJob
	waiting  []*simJob // queued, in arrival order (placed ones are dropped lazily)
	// queueBuf is reused for every pass's queue: a pass may reorder it but
	// does not keep it.
	queueBuf []*proto.Job
	origin   *shared
	// holders counts, per model, the hosts holding it in RAM or on disk,
	// in all and per rack: where a fetch can come from.
	holders     map[*model]int
	rackHolders map[*model]map[int]int
	swarms      map[*model]*swarm

	passPending bool
	finished    int
	epoch       uint64
	end         float64 // the last arrival: the measured window ends there
	m           metrics
}

// passGap is how long after a change the next pass runs: the
// coordinator's scheduler spaces its passes out by as much.
const passGap = 0.010

// Run simulates trace on a fleet of spec under the policy newPolicy makes
// (given the simulated clock) and returns its metrics.
func Run(spec Spec, trace *Trace, newPolicy func(scheduler.Clock) scheduler.Policy) (*Result, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	s := &sim{
		spec:        spec,
		base:        time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		byHost:      make(map[string]*simHost),
		models:      make(map[string]*model),
		byDigest:    make(map[proto.Digest]*model),
		byID:        make(map[string]*simJob),
		holders:     make(map[*model]int),
		rackHolders: make(map[*model]map[int]int),
		swarms:      make(map[*model]*swarm),
	}
	s.fleet = scheduler.NewFleet(scheduler.FleetConfig{
		Grace:            math.MaxInt64, // simulated hosts never go quiet
		DefaultBandwidth: spec.Bandwidth,
		DefaultRunS:      10,
	})
	s.policy = newPolicy(simClock{s})
	s.origin = newShared(&s.q, spec.OriginTotal, spec.Bandwidth[proto.TierOrigin])
	for i, cm := range trace.Catalog {
		m := &model{id: i, name: cm.Name, digest: cm.Digest, size: cm.Size}
		s.models[cm.Name], s.byDigest[cm.Digest] = m, m
	}
	s.build()
	for i := range trace.Jobs {
		tj := &trace.Jobs[i]
		j := &simJob{tj: tj, arrive: tj.At, measured: tj.At >= spec.Warmup}
		j.pj = &proto.Job{ID: tj.ID, State: proto.JobQueued, SubmittedAt: s.time(tj.At),
			Spec: proto.JobSpec{Workflow: []byte(`{}`), Priority: tj.Priority, VRAMBytes: tj.VRAMBytes}}
		for _, name := range tj.Models {
			m, ok := s.models[name]
			if !ok {
				return nil, fmt.Errorf("fleetsim: job %s names model %q, which the catalog lacks", tj.ID, name)
			}
			j.models = append(j.models, m)
			j.pj.Models = append(j.pj.Models, proto.ModelRef{Name: m.name, Digest: m.digest, Size: m.size})
		}
		s.jobs = append(s.jobs, j)
		s.byID[tj.ID] = j
		s.end = max(s.end, tj.At)
		s.q.at(tj.At, func(float64) { s.arrive(j) })
	}
	if spec.Preload {
		s.preload(trace)
	}
	horizon := s.end + max(600, s.end)
	s.q.at(1, s.tick(horizon))
	for {
		ev, ok := s.q.next()
		if !ok || ev.at > horizon {
			break
		}
		s.now = ev.at
		ev.fn(ev.at)
	}
	if runHook != nil {
		runHook(s)
	}
	return s.result(), nil
}

// runHook, when tests set it, sees each finished run's whole state.
var runHook func(*sim)

// preload fills each disk with the models the warm-up asks for, most
// asked first, then the rest of the catalog in order, while they fit.
func (s *sim) preload(trace *Trace) {
	asked := make(map[string]int)
	for _, j := range trace.Jobs {
		if j.At >= s.spec.Warmup {
			break
		}
		for _, m := range j.Models {
			asked[m]++
		}
	}
	order := make([]*model, 0, len(trace.Catalog))
	for _, cm := range trace.Catalog {
		order = append(order, s.models[cm.Name])
	}
	slices.SortStableFunc(order, func(a, b *model) int { return asked[b.name] - asked[a.name] })
	for _, h := range s.hosts {
		for _, m := range order {
			if h.disk.Used()+m.size > s.spec.DiskBytes {
				continue
			}
			h.disk.Admit(m.digest, m.size)
			s.setHeld(h, m)
		}
	}
}

type simClock struct{ s *sim }

func (c simClock) Now() time.Time { return c.s.time(c.s.now) }

func (s *sim) time(t float64) time.Time { return s.base.Add(time.Duration(t * float64(time.Second))) }

// build creates the hosts, registers them with the fleet, and sends each
// one's first heartbeat.
func (s *sim) build() {
	sp := s.spec
	for i := 0; i < sp.Hosts; i++ {
		h := &simHost{id: hostID(i), index: i, rack: i / sp.HostsPerRack,
			ram: newLRUBytes(sp.RAMBytes), disk: cachefs.NewBudget(sp.DiskBytes),
			held: make(map[*model]proto.Tier), fetching: make(map[*model][]func(float64))}
		slotBytes := sp.SlotBytes
		if sp.UnlimitedVRAM {
			h.pool = make(map[*model]bool)
			slotBytes = 1 << 50
		}
		h.diskRead = newShared(&s.q, sp.Bandwidth[proto.TierDisk], 0)
		reg := &proto.Host{ID: h.id, DeviceKind: "simulated", Bandwidth: sp.Bandwidth, PeerFetch: sp.PeerFetch,
			Labels: map[string]string{"rack": fmt.Sprintf("r%03d", h.rack)}}
		for g := 0; g < sp.GPUsPerHost; g++ {
			gp := &simGPU{host: h, index: g, compute: newShared(&s.q, 1, 1)}
			for k := 0; k < sp.SlotsPerGPU; k++ {
				gp.slots = append(gp.slots, &simSlot{host: h, gpu: gp, index: k, cap: slotBytes})
			}
			h.gpus = append(h.gpus, gp)
			reg.GPUs = append(reg.GPUs, proto.GPU{Index: g, Slots: sp.SlotsPerGPU, SlotBytes: uint64(slotBytes), Name: "simulated H200"})
		}
		h.reg = reg
		s.hosts = append(s.hosts, h)
		s.byHost[h.id] = h
		s.fleet.SetHost(reg)
		s.fleet.Heartbeat(&proto.Heartbeat{HostID: h.id, Cache: []proto.CachedBlob{}}, s.time(0))
	}
}

// tick runs a pass every simulated second, as the coordinator does when
// nothing wakes it sooner (a policy may wait on time alone), until every
// job is done.
func (s *sim) tick(horizon float64) func(float64) {
	var fn func(float64)
	fn = func(at float64) {
		if s.finished == len(s.jobs) || at > horizon {
			return
		}
		s.wantPass()
		s.q.at(at+1, fn)
	}
	return fn
}

func (s *sim) arrive(j *simJob) {
	s.waiting = append(s.waiting, j)
	s.wantPass()
}

func (s *sim) wantPass() {
	if s.passPending {
		return
	}
	s.passPending = true
	s.q.at(s.now+passGap, func(float64) {
		s.passPending = false
		start, planned := time.Now(), s.m.planWall
		st, err := s.policy.Pass(s, s)
		// The policy's own time: the pass less what the planner (this
		// simulator, starting the jobs) took.
		s.m.schedWall += time.Since(start) - (s.m.planWall - planned)
		s.m.passes++
		if err != nil {
			panic(fmt.Sprintf("fleetsim: the simulator's planner refused a plan: %v", err))
		}
		s.m.placed += st.Placed
	})
}

// Queued implements scheduler.State.
func (s *sim) Queued() []*proto.Job {
	kept := s.waiting[:0]
	out := s.queueBuf[:0]
	defer func() { s.queueBuf = out }()
	for _, j := range s.waiting {
		if j.pj.State == proto.JobQueued {
			kept = append(kept, j)
			out = append(out, j.pj)
		}
	}
	clear(s.waiting[len(kept):])
	s.waiting = kept
	return out
}

// Fleet implements scheduler.State.
func (s *sim) Fleet() *scheduler.Fleet { return s.fleet }

// SubmitPlan implements scheduler.Planner: every placement holds (nothing
// else changes the simulated state meanwhile), and each job joins its
// slot's queue.
func (s *sim) SubmitPlan(plan []scheduler.Placement) ([]error, error) {
	start := time.Now()
	defer func() { s.m.planWall += time.Since(start) }()
	for _, p := range plan {
		j := s.byID[p.Job.ID]
		h := s.byHost[p.Placement.Host]
		if j == nil || h == nil || p.Placement.GPU >= len(h.gpus) || p.Placement.Slot >= len(h.gpus[p.Placement.GPU].slots) {
			return nil, fmt.Errorf("fleetsim: placement of %s on %s/%d/%d names no simulated slot", p.Job.ID, p.Placement.Host, p.Placement.GPU, p.Placement.Slot)
		}
		s.epoch++
		pl := p.Placement
		pl.Epoch = s.epoch
		j.pj.State, j.pj.Placement = proto.JobPlaced, &pl
		j.placed = s.now
		j.pj.Attempts++
		s.fleet.SetJob(j.pj)
		sl := h.gpus[pl.GPU].slots[pl.Slot]
		j.slot = sl
		j.warmAfter = j.warmAfter[:0]
		for _, d := range p.Warm {
			j.warmAfter = append(j.warmAfter, s.byDigest[d])
		}
		sl.queue = append(sl.queue, j)
		if sl.current == nil && !sl.warming {
			s.startNext(sl)
		}
	}
	return make([]error, len(plan)), nil
}

// startNext starts the slot's next job: it loads what the worker lacks,
// one model after another, then runs.
func (s *sim) startNext(sl *simSlot) {
	if len(sl.queue) == 0 {
		return
	}
	j := sl.queue[0]
	sl.queue = sl.queue[1:]
	sl.current = j
	j.loadStart = s.now
	j.warm, j.warmMain = true, true
	var missing []*model
	for i, m := range j.models {
		if !sl.holds(m) {
			j.warm = false
			if i == 0 {
				j.warmMain = false
			}
			missing = append(missing, m)
		}
	}
	s.setJobState(j, proto.JobLoading)
	s.bring(sl.host, missing, j.measured, func() { s.loaded(j) })
}

// bring loads models into a worker on h one after another, each from the
// fastest place that holds it, and then calls done.
func (s *sim) bring(h *simHost, models []*model, measured bool, done func()) {
	if len(models) == 0 {
		done()
		return
	}
	m, rest := models[0], models[1:]
	next := func(float64) { s.bring(h, rest, measured, done) }
	switch {
	case h.ram.has(m):
		h.ram.touch(m)
		h.disk.Access(m.digest)
		s.q.at(s.now+float64(m.size)/s.spec.Bandwidth[proto.TierRAM], next)
	case h.disk.Has(m.digest):
		h.disk.Access(m.digest)
		h.diskRead.start(s.now, float64(m.size), next)
	default:
		s.fetch(h, m, measured, next)
	}
}

// fetch brings m to h from a peer in its rack, a peer elsewhere, or the
// origin, then keeps it on h's disk. As the agent's cache does, a host
// fetches a model once however many of its slots want it, and hosts that
// want a model the origin is already sending share that download: the
// origin serves one copy and each of them receives it at the peer rate,
// no sooner than the origin's copy is done.
func (s *sim) fetch(h *simHost, m *model, measured bool, next func(float64)) {
	if waiters, ok := h.fetching[m]; ok {
		h.fetching[m] = append(waiters, next)
		return
	}
	h.fetching[m] = []func(float64){next}
	bw := s.spec.Bandwidth
	keep := func(at float64) {
		evicted, _ := h.disk.Admit(m.digest, m.size)
		for _, d := range evicted {
			s.setHeld(h, s.byDigest[d])
		}
		s.setHeld(h, m)
		waiters := h.fetching[m]
		delete(h.fetching, m)
		for _, w := range waiters {
			w(at)
		}
	}
	others := s.holders[m]
	inRack := s.rackHolders[m][h.rack]
	peerS := float64(m.size) / bw[proto.TierPeer]
	switch {
	case s.spec.PeerFetch && inRack > 0:
		s.count(measured, proto.TierRack, m.size)
		s.q.at(s.now+float64(m.size)/bw[proto.TierRack], keep)
	case s.spec.PeerFetch && others > 0:
		s.count(measured, proto.TierPeer, m.size)
		s.q.at(s.now+peerS, keep)
	case s.spec.PeerFetch && s.swarms[m] != nil:
		s.count(measured, proto.TierPeer, m.size)
		sw := s.swarms[m]
		start := s.now
		sw.joiners = append(sw.joiners, func(at float64) { s.q.at(max(at, start+peerS), keep) })
	default:
		s.count(measured, proto.TierOrigin, m.size)
		sw := &swarm{}
		if s.spec.PeerFetch {
			s.swarms[m] = sw
		}
		s.origin.start(s.now, float64(m.size), func(at float64) {
			delete(s.swarms, m)
			keep(at)
			for _, f := range sw.joiners {
				f(at)
			}
		})
	}
}

// swarm is a model the origin is sending to one host while others wait
// for it from that host.
type swarm struct {
	joiners []func(at float64)
}

func (s *sim) count(measured bool, t proto.Tier, n int64) {
	if !measured {
		return
	}
	if t == proto.TierOrigin {
		s.m.originBytes += n
	} else {
		s.m.peerBytes += n
	}
}

// setHeld recomputes m's tier on h and tells peers and the fleet when it
// changed.
func (s *sim) setHeld(h *simHost, m *model) {
	var t proto.Tier
	switch {
	case h.ram.has(m):
		t = proto.TierRAM
	case h.disk.Has(m.digest):
		t = proto.TierDisk
	}
	old := h.held[m]
	if old == t {
		return
	}
	if old == "" {
		s.holders[m]++
		if s.rackHolders[m] == nil {
			s.rackHolders[m] = make(map[int]int)
		}
		s.rackHolders[m][h.rack]++
	}
	if t == "" {
		delete(h.held, m)
		s.holders[m]--
		s.rackHolders[m][h.rack]--
		s.fleet.CacheDelta(h.id, nil, []proto.Digest{m.digest})
		return
	}
	h.held[m] = t
	s.fleet.CacheDelta(h.id, []proto.CachedBlob{{Digest: m.digest, Size: m.size, Tier: t}}, nil)
}

// loaded: every model is in the worker; the job runs on the GPU's
// compute, shared with whatever else runs there.
func (s *sim) loaded(j *simJob) {
	sl := j.slot
	sl.load(j.models)
	s.beat(sl)
	j.runStart = s.now
	s.setJobState(j, proto.JobRunning)
	g := sl.gpu
	if g.compute.active() == 0 {
		g.busySince = s.now
	}
	g.compute.start(s.now, j.tj.RunS, func(float64) { s.ran(j) })
}

func (s *sim) ran(j *simJob) {
	sl := j.slot
	g := sl.gpu
	if g.compute.active() == 0 {
		g.busyS += overlap(g.busySince, s.now, s.spec.Warmup, s.end)
	}
	j.finish = s.now
	j.done = true
	s.finished++
	j.pj.RunS = s.now - j.runStart
	s.setJobState(j, proto.JobSucceeded)
	// The agent promotes what a job used into RAM once it is done.
	h := sl.host
	for _, m := range j.models {
		for _, ev := range h.ram.admit(m) {
			s.setHeld(h, ev)
		}
		s.setHeld(h, m)
	}
	s.m.record(j)
	sl.current = nil
	if len(sl.queue) == 0 && len(j.warmAfter) > 0 {
		s.warm(sl, j.warmAfter)
	} else {
		s.startNext(sl)
	}
	s.wantPass()
}

// warm loads models into an idle slot's worker, as an agent does with the
// models a placement asked it to warm; a job placed there meanwhile waits
// for the load to end.
func (s *sim) warm(sl *simSlot, models []*model) bool {
	var missing []*model
	var used int64
	for _, r := range sl.resident {
		used += r.size
	}
	for _, m := range models {
		if m != nil && !sl.holds(m) && used+m.size <= sl.cap {
			missing = append(missing, m)
			used += m.size
		}
	}
	if len(missing) == 0 {
		return false
	}
	sl.warming = true
	s.m.warmLoads += len(missing)
	s.bring(sl.host, missing, false, func() {
		sl.warming = false
		if sl.host.pool != nil {
			sl.load(missing)
		} else {
			sl.resident = append(sl.resident, missing...)
		}
		s.beat(sl)
		s.startNext(sl)
	})
	return true
}

func (s *sim) setJobState(j *simJob, st proto.JobState) {
	j.pj.State = st
	t := s.time(s.now)
	if st == proto.JobRunning {
		j.pj.History = append(j.pj.History, proto.JobEvent{Type: proto.EventState, State: st, Time: t})
	}
	if st == proto.JobLoading && j.pj.StartedAt == nil {
		j.pj.StartedAt = &t
	}
	s.fleet.SetJob(j.pj)
}

// beat sends the slot's state to the fleet, as its agent's heartbeat would
// right after a load (every slot's, where they share unlimited VRAM).
func (s *sim) beat(sl *simSlot) {
	b := &proto.Heartbeat{HostID: sl.host.id}
	if sl.host.pool != nil {
		for _, g := range sl.host.gpus {
			for _, o := range g.slots {
				b.Slots = append(b.Slots, o.state())
			}
		}
	} else {
		b.Slots = []proto.SlotState{sl.state()}
	}
	s.fleet.Heartbeat(b, s.time(s.now))
}

// overlap is how much of [a, b] lies inside [lo, hi].
func overlap(a, b, lo, hi float64) float64 {
	return max(0, min(b, hi)-max(a, lo))
}
