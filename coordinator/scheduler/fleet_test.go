package scheduler

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// checkIndexes recomputes every index of f from the hosts, slots and jobs
// and fails on the first difference: the indexes are only worth their
// speed if they always say what a scan would.
func checkIndexes(t *testing.T, f *Fleet) {
	t.Helper()
	open, soon := 0, 0
	avail := make(map[uint32]map[*slot]bool)
	holders := make(map[uint32]map[*host]bool)
	peers := make(map[uint32]int32)
	racks := make(map[uint32]map[int32]int32)
	for _, h := range f.hostOrder {
		hostOpen, hostBusy := 0, 0
		var pending int64
		for _, s := range h.slots {
			want := uint8(statusFull)
			if h.schedulable && !s.blocked {
				switch len(s.jobs) {
				case 0:
					want = statusOpen
				case 1:
					want = statusSoon
				}
			}
			if s.status != want {
				t.Fatalf("slot %s/%d/%d status %d, want %d (%d jobs, schedulable %v, blocked %v)", h.id, s.gpu.index, s.index, s.status, want, len(s.jobs), h.schedulable, s.blocked)
			}
			switch want {
			case statusOpen:
				open++
				hostOpen++
				b := min(s.gpu.busy, maxBucket)
				if s.bucket != b || s.openPos < 0 || s.class.buckets[b].items[s.openPos] != s {
					t.Fatalf("open slot %s/%d/%d not in its bucket %d", h.id, s.gpu.index, s.index, b)
				}
			case statusSoon:
				soon++
				if s.openPos < 0 || s.class.soon.items[s.openPos] != s {
					t.Fatalf("soon slot %s/%d/%d not in its class's soon set", h.id, s.gpu.index, s.index)
				}
			}
			if len(s.jobs) > 0 {
				hostBusy++
			}
			for _, j := range s.jobs {
				pending += j.diskBytes
				if f.jobs[j.id] != j {
					t.Fatalf("job %s on slot %s/%d/%d is not the fleet's entry", j.id, h.id, s.gpu.index, s.index)
				}
			}
			// resident is lru sorted, without duplicates.
			sorted := slices.Clone(s.lru)
			slices.Sort(sorted)
			sorted = slices.Compact(sorted)
			if len(sorted) != len(s.resident) {
				t.Fatalf("slot %s/%d/%d: lru %v but resident %v", h.id, s.gpu.index, s.index, s.lru, s.resident)
			}
			var used, reported int64
			for _, d := range s.lru {
				used += f.blobs[d].size
			}
			for _, d := range s.reported {
				reported += f.blobs[d].size
			}
			// A prediction never overfills a slot its worker did not
			// report overfull.
			if used != s.used || s.cap > 0 && reported <= s.cap && used > s.cap && len(s.lru) > 1 {
				var js [][]uint32
				for _, j := range s.jobs {
					js = append(js, j.models, j.warm)
				}
				var sz []int64
				for _, b := range f.blobs {
					sz = append(sz, b.size)
				}
				t.Fatalf("slot %s/%d/%d: used %d, recorded %d, capacity %d (lru %v, reported %v, jobs and warms %v, sizes %v)", h.id, s.gpu.index, s.index, used, s.used, s.cap, s.lru, s.reported, js, sz)
			}
			for i, r := range s.resident {
				if r.d != sorted[i] {
					t.Fatalf("slot %s/%d/%d resident %v, want %v", h.id, s.gpu.index, s.index, s.resident, sorted)
				}
				if want != statusFull {
					if avail[r.d] == nil {
						avail[r.d] = make(map[*slot]bool)
					}
					avail[r.d][s] = true
				}
			}
		}
		if h.open != hostOpen || h.busy != hostBusy || h.diskPending != pending {
			t.Fatalf("host %s counts open %d busy %d disk %d, want %d %d %d", h.id, h.open, h.busy, h.diskPending, hostOpen, hostBusy, pending)
		}
		for _, g := range h.gpus {
			busy := 0
			for _, s := range g.slots {
				if len(s.jobs) > 0 {
					busy++
				}
			}
			if g.busy != busy {
				t.Fatalf("gpu %s/%d busy %d, want %d", h.id, g.index, g.busy, busy)
			}
		}
		for i, e := range h.cache {
			if i > 0 && h.cache[i-1].d >= e.d {
				t.Fatalf("host %s cache not sorted", h.id)
			}
			if tier, ok := h.cachedTier(e.d); !ok || tier != int(e.tier) {
				t.Fatalf("host %s blob %d: dense tier %d %v, entry %d", h.id, e.d, tier, ok, e.tier)
			}
			if holders[e.d] == nil {
				holders[e.d] = make(map[*host]bool)
			}
			holders[e.d][h] = true
			if h.up && h.peer {
				peers[e.d]++
				if h.rack >= 0 {
					if racks[e.d] == nil {
						racks[e.d] = make(map[int32]int32)
					}
					racks[e.d][h.rack]++
				}
			}
		}
	}
	if f.openCount != open || f.soonCount != soon {
		t.Fatalf("fleet counts open %d soon %d, want %d %d", f.openCount, f.soonCount, open, soon)
	}
	for _, b := range f.blobs {
		if len(b.avail.items) != len(avail[b.id]) {
			t.Fatalf("blob %d warm set has %d slots, want %d", b.id, len(b.avail.items), len(avail[b.id]))
		}
		for i, s := range b.avail.items {
			if !avail[b.id][s] || s.residentEntry(b.id).pos != int32(i) {
				t.Fatalf("blob %d warm set member %d is wrong", b.id, i)
			}
		}
		if len(b.holders.items) != len(holders[b.id]) {
			t.Fatalf("blob %d has %d holders, want %d", b.id, len(b.holders.items), len(holders[b.id]))
		}
		for i, h := range b.holders.items {
			if !holders[b.id][h] || h.cacheEntry(b.id).pos != int32(i) {
				t.Fatalf("blob %d holder %d is wrong", b.id, i)
			}
		}
		if b.peers != peers[b.id] {
			t.Fatalf("blob %d peers %d, want %d", b.id, b.peers, peers[b.id])
		}
		for r, n := range b.racks {
			if racks[b.id][r] != n {
				t.Fatalf("blob %d rack %d count %d, want %d", b.id, r, n, racks[b.id][r])
			}
		}
		if len(b.racks) != len(racks[b.id]) {
			t.Fatalf("blob %d racks %v, want %v", b.id, b.racks, racks[b.id])
		}
	}
}

// TestFleetIndexesStayTrue drives a fleet through a seeded random series
// of every kind of change, with passes placing jobs among them, and checks
// the indexes after each step.
func TestFleetIndexesStayTrue(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 9))
			h := newHarness(t)
			s := New(Config{Clock: h.clock})
			models := []string{"a", "b", "c", "d", "e", "f"}
			sizes := []float64{6.9, 2, 12, 0.2, 0.1, 4}
			hosts := []string{"h0", "h1", "h2", "h3"}
			racks := []map[string]string{{"rack": "r1"}, {"rack": "r1"}, {"rack": "r2"}, nil}
			for i, id := range hosts {
				h.host(id, 2, 2, 16, racks[i])
			}
			var live []*proto.Job
			for step := 0; step < 400; step++ {
				h.advance(time.Duration(r.IntN(2000)) * time.Millisecond)
				id := hosts[r.IntN(len(hosts))]
				switch op := r.IntN(10); {
				case op < 3: // a job arrives and a pass runs
					k := r.IntN(len(models))
					args := []any{models[k], sizes[k]}
					if r.IntN(2) == 0 {
						k2 := (k + 1 + r.IntN(len(models)-1)) % len(models)
						args = append(args, models[k2], sizes[k2])
					}
					h.submit(args...)
					h.pass(s)
				case op < 5 && len(live) > 0: // a placed job moves on
					j := live[r.IntN(len(live))]
					if j.State == proto.JobPlaced {
						h.run(j)
					} else {
						h.finish(j, float64(1+r.IntN(20)))
					}
				case op < 6: // a heartbeat with new residency and cache
					b := proto.Heartbeat{HostID: id, Draining: r.IntN(10) == 0, Degraded: map[bool]string{true: "hot"}[r.IntN(12) == 0]}
					for g := 0; g < 2; g++ {
						for sl := 0; sl < 2; sl++ {
							st := proto.SlotState{GPU: g, Slot: sl}
							for _, k := range r.Perm(len(models))[:r.IntN(3)] {
								st.Resident = append(st.Resident, digestOf(models[k]))
							}
							if r.IntN(15) == 0 {
								st.Blocked = "foreign process"
							}
							b.Slots = append(b.Slots, st)
						}
					}
					for _, k := range r.Perm(len(models))[:r.IntN(len(models))] {
						b.Cache = append(b.Cache, cached([]proto.Tier{proto.TierRAM, proto.TierDisk}[r.IntN(2)], models[k], sizes[k]))
					}
					h.beat(b)
				case op < 7: // an inventory delta
					k := r.IntN(len(models))
					if r.IntN(2) == 0 {
						h.fleet.CacheDelta(id, []proto.CachedBlob{cached(proto.TierRAM, models[k], sizes[k])}, nil)
					} else {
						h.fleet.CacheDelta(id, nil, []proto.Digest{digestOf(models[k])})
					}
				case op < 8: // a drain, a down mark, or back up
					reg := *h.fleet.hosts[id].reg
					switch r.IntN(3) {
					case 0:
						reg.Drain = !reg.Drain
					case 1:
						now := h.clock.now
						reg.DownAt = &now
					default:
						reg.DownAt = nil
					}
					h.fleet.SetHost(&reg)
				case op < 9: // time passes beyond the grace for quiet hosts
					h.fleet.Expire(h.clock.now.Add(11 * time.Second))
				default: // a host re-registers with another layout
					reg := *h.fleet.hosts[id].reg
					reg.GPUs = []proto.GPU{{Index: 0, Slots: 1 + r.IntN(4), SlotBytes: 20e9}}
					h.fleet.SetHost(&reg)
					h.beat(proto.Heartbeat{HostID: id})
				}
				live = live[:0]
				for _, j := range h.queue {
					if e := h.fleet.jobs[j.ID]; e != nil && !j.State.Terminal() {
						live = append(live, j)
					}
				}
				checkIndexes(t, h.fleet)
			}
		})
	}
}
