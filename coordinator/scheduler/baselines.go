package scheduler

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// The policies a user could pick instead of hearth's, each over the same
// fleet and fed the same jobs in the simulator, so that hearth is measured
// against them rather than against nothing:
//
//   - Random and RoundRobin: a load balancer in front of one ComfyUI
//     server per slot, which sends each request to a server at once;
//     servers queue what they are sent.
//   - LeastLoaded: a global queue that starts each job on a free slot,
//     the least busy GPU first, blind to where models are.
//   - SwarmUI: its backend handler. A request waits for a free backend
//     that has its model loaded; after 1.5 s of waiting, a free backend
//     (an unused one first, else the one used longest ago) loads it, one
//     backend per model at a time.
//   - RayMultiplex: Ray Serve's model multiplexing with one request per
//     replica: a free replica that lists the model among its last N, else
//     the free replica that lists the fewest models; each replica keeps an
//     LRU list of N models.
//   - V1: hearth's first scheduler: every slot scored on every pass, the
//     estimate without load or eviction terms, and jobs bound at once to
//     the best slot's queue however deep.
//
// Random, RoundRobin and V1 bind each job at once, into a slot's queue;
// the others place only on open slots. Only V1 looks at host caches and
// peers.

// inService returns the slots that can take work, cached until a host or
// slot goes in or out of service.
func (f *Fleet) inService() []*slot {
	if f.inServiceAt == f.topo && f.inServiceList != nil {
		return f.inServiceList
	}
	f.inServiceList = f.inServiceList[:0]
	for _, h := range f.hostOrder {
		if !h.schedulable {
			continue
		}
		for _, s := range h.slots {
			if !s.blocked {
				f.inServiceList = append(f.inServiceList, s)
			}
		}
	}
	f.inServiceAt = f.topo
	return f.inServiceList
}

func fits(s *slot, need int64, kind string) bool {
	return (s.cap <= 0 || need <= s.cap) && s.host.takes(kind)
}

// baselinePass runs pick for each queued job in order and places the job
// where pick says, as one plan.
// A policy that places only on open slots (late) stops the pass when
// none is left.
func baselinePass(st State, p Planner, now time.Time, late bool, pick func(f *Fleet, j *proto.Job, kind string) *slot) (PassStats, error) {
	f := st.Fleet()
	f.mu.Lock()
	f.expireLocked(now)
	if late && f.openCount == 0 {
		f.mu.Unlock()
		return PassStats{Idle: true}, nil
	}
	queue := st.Queued()
	stats := PassStats{Queued: len(queue)}
	SortQueue(queue)
	var plan []Placement
	for _, j := range queue {
		if late && f.openCount == 0 {
			break
		}
		s := pick(f, j, j.Spec.Kind())
		if s == nil {
			continue
		}
		pl := simplePlacement(f, j, s, now)
		f.place(j, s, &pl)
		plan = append(plan, Placement{Job: j, Placement: pl})
	}
	f.mu.Unlock()
	placed, err := submit(f, p, plan)
	stats.Placed = placed
	return stats, err
}

// simplePlacement records the tiers a baseline's choice will load from, so
// the simulator and the estimates read the same for every policy.
func simplePlacement(f *Fleet, j *proto.Job, s *slot, now time.Time) proto.Placement {
	wait := 0.0
	if len(s.jobs) > 0 {
		wait = f.remaining(s, now)
	}
	return f.placementOn(j, s, wait, now)
}

// Random sends each job to a slot drawn at random.
type Random struct {
	Clock Clock
	rng   *rand.Rand
}

// NewRandom returns the random policy, seeded.
func NewRandom(clock Clock, seed uint64) *Random {
	return &Random{Clock: clock, rng: rand.New(rand.NewPCG(seed, 0x5eed))}
}

func (r *Random) Name() string { return "random" }

func (r *Random) Pass(st State, p Planner) (PassStats, error) {
	return baselinePass(st, p, r.Clock.Now(), false, func(f *Fleet, j *proto.Job, kind string) *slot {
		need := VRAMNeed(j)
		slots := f.inService()
		for try := 0; try < 64 && len(slots) > 0; try++ {
			if s := slots[r.rng.IntN(len(slots))]; fits(s, need, kind) {
				return s
			}
		}
		return nil
	})
}

// RoundRobin sends each job to the next slot in turn.
type RoundRobin struct {
	Clock Clock
	next  int
}

func (r *RoundRobin) Name() string { return "round-robin" }

func (r *RoundRobin) Pass(st State, p Planner) (PassStats, error) {
	return baselinePass(st, p, r.Clock.Now(), false, func(f *Fleet, j *proto.Job, kind string) *slot {
		need := VRAMNeed(j)
		slots := f.inService()
		for i := 0; i < len(slots); i++ {
			s := slots[r.next%len(slots)]
			r.next++
			if fits(s, need, kind) {
				return s
			}
		}
		return nil
	})
}

// LeastLoaded starts each job on a free slot of the least busy GPU.
type LeastLoaded struct {
	Clock Clock
	rot   int
}

func (l *LeastLoaded) Name() string { return "least-loaded" }

func (l *LeastLoaded) Pass(st State, p Planner) (PassStats, error) {
	return baselinePass(st, p, l.Clock.Now(), true, func(f *Fleet, j *proto.Job, kind string) *slot {
		need := VRAMNeed(j)
		for b := 0; b <= maxBucket; b++ {
			for _, c := range f.classes {
				if c.cap > 0 && c.cap < need {
					continue
				}
				items := c.buckets[b].items
				for i := range items {
					if s := items[(l.rot+i)%len(items)]; fits(s, need, kind) {
						l.rot++
						return s
					}
				}
			}
		}
		return nil
	})
}

// SwarmUI places as SwarmUI's backend handler does (see above).
type SwarmUI struct {
	Clock Clock
	// lastUsed is when each slot was last given a job.
	lastUsed map[int32]time.Time
	// loading is, per model, the job loading it on a backend now.
	loading map[uint32]string
	// model remembers each waiting request's model.
	model map[*proto.Job]*blob
	rot   int
}

// swarmLoadDelay is how long SwarmUI lets a request wait for a backend
// with its model before it has a free one load it.
const swarmLoadDelay = 1500 * time.Millisecond

func (s *SwarmUI) Name() string { return "swarmui" }

func (s *SwarmUI) Pass(st State, p Planner) (PassStats, error) {
	if s.lastUsed == nil {
		s.lastUsed, s.loading, s.model = map[int32]time.Time{}, map[uint32]string{}, map[*proto.Job]*blob{}
	}
	now := s.Clock.Now()
	// Within a pass, a model whose one loader is busy and that no free
	// backend holds blocks every request for it; the free backends are
	// ranked once.
	blocked := make(map[uint32]bool)
	var free []*slot
	ranked := false
	return baselinePass(st, p, now, true, func(f *Fleet, j *proto.Job, kind string) *slot {
		model, ok := s.model[j]
		if !ok {
			model = primary(f, j)
			s.model[j] = model
		}
		if model == nil || blocked[model.id] {
			return nil
		}
		need := VRAMNeed(j)
		use := func(sl *slot) *slot {
			s.lastUsed[sl.id] = now
			delete(s.model, j)
			return sl
		}
		items := model.avail.items
		for i := range items {
			if sl := items[(s.rot+i)%len(items)]; sl.status == statusOpen && fits(sl, need, kind) {
				s.rot++
				return use(sl)
			}
		}
		if id, ok := s.loading[model.id]; ok {
			if e := f.jobs[id]; e != nil && e.runningSince.IsZero() {
				blocked[model.id] = true // one backend loads a model at a time
				return nil
			}
			delete(s.loading, model.id)
		}
		if now.Sub(j.SubmittedAt) < swarmLoadDelay {
			return nil
		}
		if !ranked {
			ranked = true
			for _, c := range f.classes {
				for b := range c.buckets {
					free = append(free, c.buckets[b].items...)
				}
			}
			slices.SortStableFunc(free, func(a, b *slot) int {
				switch {
				case s.before(a, b):
					return -1
				case s.before(b, a):
					return 1
				}
				return 0
			})
		}
		for _, sl := range free {
			if sl.status == statusOpen && fits(sl, need, kind) {
				s.loading[model.id] = j.ID
				return use(sl)
			}
		}
		return nil
	})
}

// before orders free backends as SwarmUI picks one to load a model: an
// unused one first, then the one used longest ago.
func (s *SwarmUI) before(a, b *slot) bool {
	if ua, ub := len(a.lru) == 0, len(b.lru) == 0; ua != ub {
		return ua
	}
	return s.lastUsed[a.id].Before(s.lastUsed[b.id])
}

// primary is the model a baseline routes by: the job's largest, its
// checkpoint.
func primary(f *Fleet, j *proto.Job) *blob {
	var best *blob
	for _, m := range j.Models {
		b := f.intern(m.Digest, m.Size)
		if best == nil || b.size > best.size {
			best = b
		}
	}
	return best
}

// RayMultiplex places as Ray Serve's multiplexed router does (see above).
type RayMultiplex struct {
	Clock Clock
	// ModelsPerReplica is max_num_models_per_replica (default 3).
	ModelsPerReplica int
	lru              map[int32][]uint32 // per slot, least recent first
	rot              int
}

func (r *RayMultiplex) Name() string { return "ray-multiplex" }

func (r *RayMultiplex) Pass(st State, p Planner) (PassStats, error) {
	if r.lru == nil {
		r.lru = map[int32][]uint32{}
	}
	n := r.ModelsPerReplica
	if n <= 0 {
		n = 3
	}
	return baselinePass(st, p, r.Clock.Now(), true, func(f *Fleet, j *proto.Job, kind string) *slot {
		need := VRAMNeed(j)
		model := primary(f, j)
		if model == nil {
			return nil
		}
		var best *slot
		for _, c := range f.classes {
			if c.cap > 0 && c.cap < need {
				continue
			}
			for b := range c.buckets {
				items := c.buckets[b].items
				for i := range items {
					sl := items[(r.rot+i)%len(items)]
					if !fits(sl, need, kind) {
						continue
					}
					if slices.Contains(r.lru[sl.id], model.id) {
						best = sl
						break
					}
					if best == nil || len(r.lru[sl.id]) < len(r.lru[best.id]) {
						best = sl
					}
				}
				if best != nil && slices.Contains(r.lru[best.id], model.id) {
					break
				}
			}
		}
		if best == nil {
			return nil
		}
		r.rot++
		l := slices.DeleteFunc(r.lru[best.id], func(d uint32) bool { return d == model.id })
		l = append(l, model.id)
		if len(l) > n {
			l = l[len(l)-n:]
		}
		r.lru[best.id] = l
		return best
	})
}

// V1 is hearth's first scheduler (see above), kept as the baseline that
// shows what the indexes, late binding and the load and evict terms buy.
type V1 struct {
	Clock Clock
}

func (v *V1) Name() string { return "hearth-v1" }

func (v *V1) Pass(st State, p Planner) (PassStats, error) {
	now := v.Clock.Now()
	return baselinePass(st, p, now, false, func(f *Fleet, j *proto.Job, kind string) *slot {
		need := VRAMNeed(j)
		var best *slot
		bestEst := 0.0
		for _, s := range f.inService() {
			if !fits(s, need, kind) {
				continue
			}
			est := f.remaining(s, now)
			for _, m := range j.Models {
				b := f.intern(m.Digest, m.Size)
				if !s.holds(b.id) && !v1Pending(s, b.id) {
					est += s.host.seconds(f.hostTier(s.host, b), b.size)
				}
			}
			if best == nil || est < bestEst || est == bestEst && len(s.jobs) < len(best.jobs) {
				best, bestEst = s, est
			}
		}
		return best
	})
}

// v1Pending reports whether a job on s will load d: v1 counted what a
// slot's queue would load as resident, whatever the slot could hold.
func v1Pending(s *slot, d uint32) bool {
	for _, j := range s.jobs {
		if slices.Contains(j.models, d) {
			return true
		}
	}
	return false
}
