package coordinator

import (
	"cmp"
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// scheduler places queued jobs. It runs only on the leader (see
// runLeadership) and only proposes PlaceJob commands; the FSM decides
// whether they hold, so a scheduler that lost leadership mid-pass cannot
// corrupt anything: its proposals simply fail.
//
// v1 policy: each queued job, highest priority first and FIFO within a
// priority, goes to the (host, GPU, slot) with the smallest estimated start
// time, where
//
//	estimate = queue wait of the slot + Σ over models  size / bandwidth(tier)
//
// and a model's tier on a slot is vram if the slot's worker holds it (or a
// job already queued on that slot will load it), else ram or disk if the
// host's cache has it, else origin. The peer tier joins once agents can
// fetch from each other.
type scheduler struct {
	s    *Server
	wake chan struct{}

	mu      sync.Mutex
	avgRunS float64 // moving average of observed run times

	lastDepth time.Time // when the queue-depth gauge was last set (run's goroutine only)
}

// anyHostUp reports whether some registered host is heartbeating, not
// draining and not marked down: whether a pass could place anything.
func (sc *scheduler) anyHostUp() bool {
	for _, h := range sc.s.fsm.Hosts() {
		beat, _, alive := sc.s.hosts.get(h.ID, sc.s.cfg.HeartbeatGrace)
		if alive && !beat.Draining && !h.Drain && beat.Degraded == "" && h.DownAt == nil {
			return true
		}
	}
	return false
}

func newScheduler(s *Server) *scheduler {
	return &scheduler{s: s, wake: make(chan struct{}, 1), avgRunS: s.cfg.DefaultRunS}
}

// poke asks for a scheduling pass soon without blocking.
func (sc *scheduler) poke() {
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// observe is the FSM's after-apply hook, called on every node.
func (sc *scheduler) observe(cmd proto.Command, res any) {
	j, _ := res.(*proto.Job)
	switch c := cmd.(type) {
	case *proto.SubmitJob, *proto.RegisterHost:
		sc.poke()
	case *proto.PlaceJob:
		if j != nil && j.Placement != nil {
			sc.s.metrics.observePlacement(j.Placement)
		}
	case *proto.PlaceJobs:
		rs, _ := res.([]PlaceResult)
		for _, r := range rs {
			if r.Job != nil && r.Job.Placement != nil {
				sc.s.metrics.observePlacement(r.Job.Placement)
			}
		}
	case *proto.SubmitJobs, *proto.RetryJob, *proto.MarkHostDown, *proto.DrainHost:
		sc.poke()
	case *proto.ReportJob:
		if c.Report.State.Terminal() {
			sc.poke()
		}
		if j != nil && c.Report.State == proto.JobSucceeded && j.RunS > 0 {
			sc.mu.Lock()
			sc.avgRunS = 0.8*sc.avgRunS + 0.2*j.RunS
			sc.mu.Unlock()
		}
	}
}

// minPassGap spaces passes out under a flood of wake-ups (every accepted
// batch pokes): a pass looks at the whole queue, so back-to-back passes
// would spend the leader's CPU re-sorting it instead of accepting jobs.
const minPassGap = 10 * time.Millisecond

func (sc *scheduler) run(ctx context.Context) {
	t := time.NewTicker(sc.s.cfg.SchedulerInterval)
	defer t.Stop()
	for {
		start := time.Now()
		sc.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-sc.wake:
		case <-t.C:
		}
		if gap := minPassGap - time.Since(start); gap > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(gap):
			}
		}
	}
}

// slotView is the scheduler's picture of one slot during a pass.
type slotView struct {
	host     *proto.Host
	gpu      int
	slot     int
	capBytes int64
	resident map[proto.Digest]bool // held by the worker, or will be after pending jobs
	cache    map[proto.Digest]proto.Tier
	// holders lists, for every blob, the other live hosts that hold it and
	// serve peers (shared by every slot of the pass).
	holders map[proto.Digest][]*proto.Host
	pending []*proto.Job // placed on this slot, not finished
	order   int          // stable tie-break
}

// candidate is a scored slot for one job.
type candidate struct {
	sv        *slotView
	waitS     float64
	estimateS float64
	models    []proto.ModelPlacement
}

func (sc *scheduler) pass(ctx context.Context) {
	s := sc.s
	now := s.cfg.Now()
	if !sc.anyHostUp() {
		// Nowhere to place. The queue is counted for the metric at most
		// once per SchedulerInterval, not on every wake-up.
		if now.Sub(sc.lastDepth) >= s.cfg.SchedulerInterval {
			sc.lastDepth = now
			s.metrics.setQueueDepth(s.fsm.QueueDepth())
		}
		return
	}
	active := s.fsm.ActiveJobs()
	var queued []*proto.Job
	depth := make(map[int]int)
	for _, j := range active {
		if j.State != proto.JobQueued {
			continue
		}
		depth[j.Spec.Priority]++
		if j.NotBefore == nil || !j.NotBefore.After(now) {
			queued = append(queued, j)
		}
	}
	sc.lastDepth = now
	s.metrics.setQueueDepth(depth)
	if len(queued) == 0 {
		return
	}
	slots := sc.slotViews(active)
	if len(slots) == 0 {
		return
	}
	slices.SortFunc(queued, func(a, b *proto.Job) int {
		return cmp.Or(cmp.Compare(b.Spec.Priority, a.Spec.Priority), a.SubmittedAt.Compare(b.SubmittedAt), cmp.Compare(a.ID, b.ID))
	})
	// One pass proposes all its placements in one entry: the FSM checks
	// each on its own, and the views below already account for the earlier
	// ones, as they would after applying them one by one.
	var items []proto.PlaceJob
	for _, j := range queued {
		if ctx.Err() != nil {
			return
		}
		best, ok := sc.choose(j, slots, now)
		if !ok {
			continue // nothing fits now; stays queued
		}
		p := proto.Placement{
			Host: best.sv.host.ID, GPU: best.sv.gpu, Slot: best.sv.slot,
			Models: best.models, QueueWaitS: round3(best.waitS), EstimateS: round3(best.estimateS), PlacedAt: now.UTC(),
		}
		items = append(items, proto.PlaceJob{JobID: j.ID, Placement: p})
		pj := j.Clone()
		pj.State, pj.Placement = proto.JobPlaced, &p
		best.sv.pending = append(best.sv.pending, pj)
		for _, m := range j.Models {
			best.sv.resident[m.Digest] = true
		}
	}
	if len(items) == 0 {
		return
	}
	res, err := s.propose(&proto.PlaceJobs{Items: items})
	if err != nil {
		if !errors.Is(err, ErrNotLeader) {
			s.log.Warn("placements not recorded", "jobs", len(items), "err", err)
		}
		return
	}
	for i, r := range res.([]PlaceResult) {
		if r.Err != nil {
			s.log.Warn("placement refused", "job", items[i].JobID, "err", r.Err)
			continue
		}
		p := r.Job.Placement
		s.log.Debug("placed", "job", r.Job.ID, "host", p.Host, "gpu", p.GPU, "slot", p.Slot, "estimate_s", p.EstimateS)
	}
}

// slotViews builds the pass's slot list from registrations, heartbeats and
// the active jobs. Hosts that are down, draining or degraded offer no slots.
func (sc *scheduler) slotViews(active []*proto.Job) []*slotView {
	s := sc.s
	byKey := make(map[[3]any]*slotView)
	var out []*slotView
	holders := map[proto.Digest][]*proto.Host{}
	for _, h := range s.fsm.Hosts() {
		beat, _, alive := s.hosts.get(h.ID, s.cfg.HeartbeatGrace)
		if !alive || h.DownAt != nil {
			continue
		}
		if h.PeerFetch { // a draining host still serves its blobs
			for _, b := range beat.Cache {
				holders[b.Digest] = append(holders[b.Digest], h)
			}
		}
		if beat.Draining || h.Drain || beat.Degraded != "" {
			continue
		}
		cache := make(map[proto.Digest]proto.Tier, len(beat.Cache))
		for _, b := range beat.Cache {
			if t, ok := cache[b.Digest]; !ok || tierRank(b.Tier) < tierRank(t) {
				cache[b.Digest] = b.Tier
			}
		}
		resident := make(map[[2]int][]proto.Digest)
		blocked := make(map[[2]int]bool)
		for _, st := range beat.Slots {
			resident[[2]int{st.GPU, st.Slot}] = st.Resident
			if st.Blocked != "" {
				blocked[[2]int{st.GPU, st.Slot}] = true
			}
		}
		for _, g := range h.GPUs {
			for i := 0; i < g.Slots; i++ {
				if blocked[[2]int{g.Index, i}] {
					continue // its memory is held by a process the agent does not manage
				}
				sv := &slotView{host: h, gpu: g.Index, slot: i, capBytes: int64(g.SlotBytes),
					resident: make(map[proto.Digest]bool), cache: cache, holders: holders, order: len(out)}
				for _, d := range resident[[2]int{g.Index, i}] {
					sv.resident[d] = true
				}
				byKey[[3]any{h.ID, g.Index, i}] = sv
				out = append(out, sv)
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	var placed []*proto.Job
	for _, j := range active {
		if j.Placement != nil {
			placed = append(placed, j)
		}
	}
	slices.SortFunc(placed, func(a, b *proto.Job) int { return cmp.Compare(a.Placement.Epoch, b.Placement.Epoch) })
	for _, j := range placed {
		if sv, ok := byKey[[3]any{j.Placement.Host, j.Placement.GPU, j.Placement.Slot}]; ok {
			sv.pending = append(sv.pending, j)
			for _, m := range j.Models {
				sv.resident[m.Digest] = true
			}
		}
	}
	return out
}

// vramNeed is the slot size a job needs: its declared VRAM, and at least
// room for its models.
func vramNeed(j *proto.Job) int64 {
	var need int64
	for _, m := range j.Models {
		need += m.Size
	}
	return max(need, j.Spec.VRAMBytes)
}

func (sc *scheduler) choose(j *proto.Job, slots []*slotView, now time.Time) (candidate, bool) {
	need := vramNeed(j)
	kind := j.Spec.Kind()
	var best candidate
	found := false
	for _, sv := range slots {
		if sv.capBytes > 0 && need > sv.capBytes || !sv.host.Takes(kind) {
			continue
		}
		c := sc.score(j, sv, now)
		if !found || c.estimateS < best.estimateS ||
			c.estimateS == best.estimateS && (len(sv.pending) < len(best.sv.pending) ||
				len(sv.pending) == len(best.sv.pending) && sv.order < best.sv.order) {
			best, found = c, true
		}
	}
	return best, found
}

func (sc *scheduler) score(j *proto.Job, sv *slotView, now time.Time) candidate {
	sc.mu.Lock()
	avgRun := sc.avgRunS
	sc.mu.Unlock()
	c := candidate{sv: sv}
	for _, p := range sv.pending {
		switch {
		case p.State == proto.JobRunning || p.State == proto.JobUploading:
			elapsed := 0.0
			if p.StartedAt != nil {
				elapsed = now.Sub(*p.StartedAt).Seconds()
			}
			c.waitS += math.Max(0, avgRun-elapsed)
		default:
			load := 0.0
			if p.Placement != nil {
				load = p.Placement.EstimateS - p.Placement.QueueWaitS
			}
			c.waitS += load + avgRun
		}
	}
	c.estimateS = c.waitS
	for _, m := range j.Models {
		tier := proto.TierOrigin
		switch {
		case sv.resident[m.Digest]:
			tier = proto.TierVRAM
		case sv.cache[m.Digest] != "":
			tier = sv.cache[m.Digest]
		case sv.host.PeerFetch:
			tier = peerTier(sv.host, sv.holders[m.Digest])
		}
		secs := sc.transferSeconds(sv.host, tier, m.Size)
		c.estimateS += secs
		c.models = append(c.models, proto.ModelPlacement{Name: m.Name, Digest: m.Digest, Tier: tier, Seconds: round3(secs), SizeByte: m.Size})
	}
	return c
}

// transferSeconds is the time to bring size bytes from tier into a worker on
// host, at the bandwidth the host reported (or the configured default).
func (sc *scheduler) transferSeconds(h *proto.Host, tier proto.Tier, size int64) float64 {
	if tier == proto.TierVRAM {
		return 0
	}
	bw := h.Bandwidth[tier]
	if bw <= 0 {
		bw = sc.s.cfg.DefaultBandwidth[tier]
	}
	if bw <= 0 {
		return math.Inf(1)
	}
	return float64(size) / bw
}

// peerTier is the tier a model comes from when only other hosts hold it:
// rack when one of them shares h's rack label, peer when any other does,
// else origin.
func peerTier(h *proto.Host, holders []*proto.Host) proto.Tier {
	tier := proto.TierOrigin
	for _, o := range holders {
		if o.ID == h.ID {
			continue
		}
		if rack := h.Labels["rack"]; rack != "" && o.Labels["rack"] == rack && o.Labels["zone"] == h.Labels["zone"] {
			return proto.TierRack
		}
		tier = proto.TierPeer
	}
	return tier
}

func tierRank(t proto.Tier) int {
	if i := slices.Index(proto.Tiers, t); i >= 0 {
		return i
	}
	return len(proto.Tiers)
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }
