package scheduler

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// v1Scan is the coordinator's first scheduling pass, kept here as it was
// (less its Raft proposal and metrics) so the placement benchmark can time
// it beside the indexed scheduler on the same fleet: every pass rebuilds a
// view of every slot from the registrations, heartbeats and active jobs,
// and every queued job scores every slot.
type v1Scan struct {
	hosts   []*proto.Host
	beats   map[string]proto.Heartbeat
	bw      map[proto.Tier]float64
	avgRunS float64
}

type v1SlotView struct {
	host     *proto.Host
	gpu      int
	slot     int
	capBytes int64
	resident map[proto.Digest]bool
	cache    map[proto.Digest]proto.Tier
	holders  map[proto.Digest][]*proto.Host
	pending  []*proto.Job
	order    int
}

type v1Candidate struct {
	sv        *v1SlotView
	waitS     float64
	estimateS float64
	models    []proto.ModelPlacement
}

// pass places queued among active and returns the placements.
func (v *v1Scan) pass(active, queued []*proto.Job, now time.Time) []proto.PlaceJob {
	slots := v.slotViews(active)
	slices.SortFunc(queued, func(a, b *proto.Job) int {
		return cmp.Or(cmp.Compare(b.Spec.Priority, a.Spec.Priority), a.SubmittedAt.Compare(b.SubmittedAt), cmp.Compare(a.ID, b.ID))
	})
	var items []proto.PlaceJob
	for _, j := range queued {
		best, ok := v.choose(j, slots, now)
		if !ok {
			continue
		}
		p := proto.Placement{Host: best.sv.host.ID, GPU: best.sv.gpu, Slot: best.sv.slot, Models: best.models,
			QueueWaitS: best.waitS, EstimateS: best.estimateS, PlacedAt: now}
		items = append(items, proto.PlaceJob{JobID: j.ID, Placement: p})
		pj := j.Clone()
		pj.State, pj.Placement = proto.JobPlaced, &p
		best.sv.pending = append(best.sv.pending, pj)
		for _, m := range j.Models {
			best.sv.resident[m.Digest] = true
		}
	}
	return items
}

func (v *v1Scan) slotViews(active []*proto.Job) []*v1SlotView {
	byKey := make(map[[3]any]*v1SlotView)
	var out []*v1SlotView
	holders := map[proto.Digest][]*proto.Host{}
	for _, h := range v.hosts {
		beat := v.beats[h.ID]
		if h.PeerFetch {
			for _, b := range beat.Cache {
				holders[b.Digest] = append(holders[b.Digest], h)
			}
		}
		cache := make(map[proto.Digest]proto.Tier, len(beat.Cache))
		for _, b := range beat.Cache {
			if t, ok := cache[b.Digest]; !ok || tierIndex(b.Tier) < tierIndex(t) {
				cache[b.Digest] = b.Tier
			}
		}
		resident := make(map[[2]int][]proto.Digest)
		for _, st := range beat.Slots {
			resident[[2]int{st.GPU, st.Slot}] = st.Resident
		}
		for _, g := range h.GPUs {
			for i := 0; i < g.Slots; i++ {
				sv := &v1SlotView{host: h, gpu: g.Index, slot: i, capBytes: int64(g.SlotBytes),
					resident: make(map[proto.Digest]bool), cache: cache, holders: holders, order: len(out)}
				for _, d := range resident[[2]int{g.Index, i}] {
					sv.resident[d] = true
				}
				byKey[[3]any{h.ID, g.Index, i}] = sv
				out = append(out, sv)
			}
		}
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

func (v *v1Scan) choose(j *proto.Job, slots []*v1SlotView, now time.Time) (v1Candidate, bool) {
	need := VRAMNeed(j)
	kind := j.Spec.Kind()
	var best v1Candidate
	found := false
	for _, sv := range slots {
		if sv.capBytes > 0 && need > sv.capBytes || !sv.host.Takes(kind) {
			continue
		}
		c := v.score(j, sv, now)
		if !found || c.estimateS < best.estimateS ||
			c.estimateS == best.estimateS && (len(sv.pending) < len(best.sv.pending) ||
				len(sv.pending) == len(best.sv.pending) && sv.order < best.sv.order) {
			best, found = c, true
		}
	}
	return best, found
}

func (v *v1Scan) score(j *proto.Job, sv *v1SlotView, now time.Time) v1Candidate {
	c := v1Candidate{sv: sv}
	for _, p := range sv.pending {
		switch {
		case p.State == proto.JobRunning || p.State == proto.JobUploading:
			elapsed := 0.0
			if p.StartedAt != nil {
				elapsed = now.Sub(*p.StartedAt).Seconds()
			}
			c.waitS += math.Max(0, v.avgRunS-elapsed)
		default:
			load := 0.0
			if p.Placement != nil {
				load = p.Placement.EstimateS - p.Placement.QueueWaitS
			}
			c.waitS += load + v.avgRunS
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
			tier = v1PeerTier(sv.host, sv.holders[m.Digest])
		}
		secs := 0.0
		if tier != proto.TierVRAM {
			secs = float64(m.Size) / v.bw[tier]
		}
		c.estimateS += secs
		c.models = append(c.models, proto.ModelPlacement{Name: m.Name, Digest: m.Digest, Tier: tier, Seconds: secs, SizeByte: m.Size})
	}
	return c
}

func v1PeerTier(h *proto.Host, holders []*proto.Host) proto.Tier {
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
