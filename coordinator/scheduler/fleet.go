package scheduler

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Fleet is the scheduler's picture of the hosts, their GPUs and slots, what
// each slot holds and runs, and which host caches which blob, kept in
// indexes that a placement reads without scanning the fleet:
//
//   - for each blob, the slots that will hold it in VRAM once their current
//     jobs have loaded and can take a job: open slots (no job) and soon
//     slots (one job, room for one more behind it);
//   - for each blob, the hosts that hold it in RAM or on disk, and how many
//     peer-serving hosts hold it in all and per rack;
//   - the open slots by size, each size bucketed by how many slots of the
//     slot's GPU are busy, so a cold job finds an idle GPU first.
//
// Its owner feeds it: registrations (SetHost), heartbeats (Heartbeat,
// CacheDelta), the passage of time (Expire) and job transitions (SetJob).
// The coordinator does so from its FSM and agent API, the fleet simulator
// from its simulated agents. Every method is safe for concurrent use; a
// pass holds the lock while it decides.
type Fleet struct {
	mu  sync.Mutex
	cfg FleetConfig

	ids   map[proto.Digest]uint32
	blobs []*blob

	hosts     map[string]*host
	hostOrder []*host // registration order: deterministic iteration
	slots     []*slot
	classes   []*openClass // by capacity, ascending
	racks     map[string]int32
	jobs      map[string]*jobEntry

	est estimator

	// gen counts changes that may let a queued job start (a slot opened,
	// residency or a cache changed, a host came up): a pass that finds
	// it, and the queue, unchanged since the last one has nothing to do.
	gen uint64
	// lastExpire is when Expire last walked the hosts.
	lastExpire time.Time
	// openCount and soonCount count the slots in each status: a pass
	// stops early when both are zero.
	openCount, soonCount int
	// topo counts changes to which slots are in service; inService caches
	// those slots as of inServiceAt.
	topo, inServiceAt uint64
	inServiceList     []*slot
}

// FleetConfig sets what a Fleet assumes where hosts say nothing.
type FleetConfig struct {
	// Grace is how long a host stays eligible after its last heartbeat.
	Grace time.Duration
	// DefaultBandwidth is bytes/s per tier for hosts that reported none.
	DefaultBandwidth map[proto.Tier]float64
	// DefaultRunS is the run time assumed for a job of a kind never seen
	// finishing.
	DefaultRunS float64
}

// NewFleet returns an empty fleet.
func NewFleet(cfg FleetConfig) *Fleet {
	if cfg.DefaultRunS <= 0 {
		cfg.DefaultRunS = 5
	}
	return &Fleet{
		cfg:   cfg,
		ids:   make(map[proto.Digest]uint32),
		hosts: make(map[string]*host),
		racks: make(map[string]int32),
		jobs:  make(map[string]*jobEntry),
		est:   newEstimator(cfg.DefaultRunS),
	}
}

// tier ranks, fastest first, as array indexes.
const (
	tVRAM = iota
	tRAM
	tDisk
	tRack
	tPeer
	tOrigin
	numTiers
)

var tierNames = [numTiers]proto.Tier{proto.TierVRAM, proto.TierRAM, proto.TierDisk, proto.TierRack, proto.TierPeer, proto.TierOrigin}

func tierIndex(t proto.Tier) int {
	for i, n := range tierNames {
		if n == t {
			return i
		}
	}
	return tOrigin
}

// blob is one digest the fleet has heard of.
type blob struct {
	id     uint32
	digest proto.Digest
	size   int64
	// avail are the open and soon slots whose predicted residency holds
	// the blob.
	avail slotSet
	// holders are the hosts with the blob in RAM or on disk.
	holders hostSet
	// peers counts up, peer-serving hosts holding it; racks the same per
	// rack id.
	peers int32
	racks map[int32]int32
	// demand is a decaying count of jobs that asked for the blob (a rate
	// times demandHalfLife), as of demandAt.
	demand   float64
	demandAt time.Time
}

// intern returns the blob id of d, creating it; a known size replaces 0.
func (f *Fleet) intern(d proto.Digest, size int64) *blob {
	if id, ok := f.ids[d]; ok {
		b := f.blobs[id]
		if size > 0 && b.size == 0 {
			f.learnSize(b, size)
		}
		return b
	}
	id := uint32(len(f.blobs))
	b := &blob{id: id, digest: d, size: size, holders: hostSet{d: id}}
	b.avail.pos = func(s *slot) *int32 { return &s.residentEntry(id).pos }
	f.ids[d] = id
	f.blobs = append(f.blobs, b)
	return b
}

// learnSize records the size of a blob first seen without one (in a
// slot's residency) and predicts again the slots that hold it, whose room
// it changes. It walks every slot, once per blob.
func (f *Fleet) learnSize(b *blob, size int64) {
	b.size = size
	for _, s := range f.slots {
		if s.host != nil && s.holds(b.id) {
			f.repredict(s)
		}
	}
}

type host struct {
	id    string
	reg   *proto.Host
	order int32
	rack  int32 // -1: no rack label
	peer  bool
	// comfy hosts run ComfyUI servers: a slot frees every model when the
	// next ones do not fit, and loads nothing ahead of a prompt.
	comfy bool
	kinds uint8 // the job kinds it takes, as kindBit bits
	bw    [numTiers]float64
	gpus  []*gpu
	slots []*slot

	lastBeat time.Time
	live     bool // a heartbeat within the grace
	draining bool
	degraded bool
	// up counts the host's blobs as peer sources: registered, not
	// marked down, heartbeating.
	up bool
	// schedulable hosts take placements: up, not drained by an operator,
	// not draining or degraded by their own report.
	schedulable bool

	cache []cacheEntry // sorted by blob id
	// tiers is the same by blob id (tier+1; 0: not cached), for the
	// scheduler's lookups, which are many more than the changes.
	tiers []uint8
	open  int // open slots
	busy  int // slots with at least one job
	// diskPending is the bytes that jobs placed on the host and not yet
	// running still have to read from its disk.
	diskPending int64
}

type cacheEntry struct {
	d    uint32
	tier uint8 // tRAM or tDisk
	pos  int32 // in the blob's holders
}

func (h *host) cacheEntry(d uint32) *cacheEntry {
	i, ok := slices.BinarySearchFunc(h.cache, d, func(e cacheEntry, d uint32) int { return cmp.Compare(e.d, d) })
	if !ok {
		return nil
	}
	return &h.cache[i]
}

func (h *host) takes(kind string) bool { return h.kinds&kindBit(kind) != 0 }

// kindBit is a job kind's bit in host.kinds.
func kindBit(kind string) uint8 {
	switch kind {
	case "workflow":
		return 1
	case "worker":
		return 2
	case "exec":
		return 4
	}
	return 8
}

type gpu struct {
	host  *host
	index int
	slots []*slot
	busy  int // slots with at least one job
}

// Slot statuses: which indexes a slot is in.
const (
	statusFull = iota // out of service, or two jobs: in no index
	statusOpen        // no job: the open sets and the warm sets
	statusSoon        // one job: the warm sets
)

type slot struct {
	id    int32
	host  *host
	gpu   *gpu
	index int
	cap   int64

	blocked bool
	// reported is what the worker holds by its last heartbeat, and lru
	// what it will hold once the jobs placed on it have loaded theirs,
	// evicting least recently used first as the worker does; both least
	// recently used first. resident is lru sorted by blob id, with each
	// blob's position in the warm set of the slot's status.
	reported []uint32
	lru      []uint32
	resident []residentEntry
	used     int64 // bytes of lru

	jobs    []*jobEntry // in placement order; the first runs first
	status  uint8
	openPos int32 // in its class's open bucket or soon set
	class   *openClass
	bucket  int
	seen    uint32 // the Scheduler's mark for the job it is choosing for
}

type residentEntry struct {
	d   uint32
	pos int32 // in the blob's open or soon set
}

func (s *slot) residentEntry(d uint32) *residentEntry {
	i, ok := slices.BinarySearchFunc(s.resident, d, func(e residentEntry, d uint32) int { return cmp.Compare(e.d, d) })
	if !ok {
		return nil
	}
	return &s.resident[i]
}

func (s *slot) holds(d uint32) bool { return s.residentEntry(d) != nil }

// openClass holds the open slots of one capacity, bucketed by how many
// slots of their GPU are busy, and its soon slots.
type openClass struct {
	cap     int64
	buckets [maxBucket + 1]slotSet
	soon    slotSet
}

const maxBucket = 8

func (f *Fleet) class(capBytes int64) *openClass {
	i, ok := slices.BinarySearchFunc(f.classes, capBytes, func(c *openClass, v int64) int { return cmp.Compare(c.cap, v) })
	if ok {
		return f.classes[i]
	}
	c := &openClass{cap: capBytes}
	for b := range c.buckets {
		c.buckets[b].pos = func(s *slot) *int32 { return &s.openPos }
	}
	c.soon.pos = func(s *slot) *int32 { return &s.openPos }
	f.classes = slices.Insert(f.classes, i, c)
	return c
}

// jobEntry is a job placed on a slot and not yet finished.
type jobEntry struct {
	id       string
	job      *proto.Job
	slot     *slot
	models   []uint32
	class    uint32 // its largest model: the run-time estimate's key
	epoch    uint64
	placedAt time.Time
	// runningSince is when it began running (zero before).
	runningSince time.Time
	loadS        float64 // the estimate of its load when placed
	diskBytes    int64   // what it reads from the host's disk, until it runs
	warm         []uint32
}

// --- registrations ---

// SetHost records a registration, new or changed (a re-registration, a
// drain, a down mark). A host whose GPU layout changed loses the jobs the
// fleet had on its old slots; the FSM requeues them through SetJob anyway.
func (f *Fleet) SetHost(reg *proto.Host) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[reg.ID]
	if !ok {
		h = &host{id: reg.ID, order: int32(len(f.hostOrder)), rack: -1}
		f.hosts[reg.ID] = h
		f.hostOrder = append(f.hostOrder, h)
	}
	f.setUp(h, false) // take its counts out while the fields change
	h.reg = reg
	h.peer = reg.PeerFetch
	h.comfy = reg.Runner == "comfyui"
	h.kinds = 0xff // no kinds listed: every kind
	if len(reg.Kinds) > 0 {
		h.kinds = 0
		for _, k := range reg.Kinds {
			h.kinds |= kindBit(k)
		}
	}
	h.rack = -1
	if r := reg.Labels["rack"]; r != "" {
		key := reg.Labels["zone"] + "/" + r
		id, ok := f.racks[key]
		if !ok {
			id = int32(len(f.racks))
			f.racks[key] = id
		}
		h.rack = id
	}
	for t := range numTiers {
		h.bw[t] = reg.Bandwidth[tierNames[t]]
		if h.bw[t] <= 0 {
			h.bw[t] = f.cfg.DefaultBandwidth[tierNames[t]]
		}
	}
	rebuilt := !sameLayout(h, reg.GPUs)
	if rebuilt {
		f.rebuildSlots(h, reg.GPUs)
	}
	f.refreshHost(h)
	if rebuilt {
		for _, s := range h.slots {
			f.restatus(s)
		}
		f.gen++
		f.topo++
	}
}

func sameLayout(h *host, gpus []proto.GPU) bool {
	if len(h.gpus) != len(gpus) {
		return false
	}
	for i, g := range gpus {
		hg := h.gpus[i]
		if hg.index != g.Index || len(hg.slots) != g.Slots || g.Slots > 0 && hg.slots[0].cap != int64(g.SlotBytes) {
			return false
		}
	}
	return true
}

func (f *Fleet) rebuildSlots(h *host, gpus []proto.GPU) {
	for _, s := range h.slots {
		f.unindexSlot(s)
		for _, j := range s.jobs {
			delete(f.jobs, j.id)
		}
		s.jobs = nil
		s.host = nil // a dead slot: its id is never reused
	}
	h.gpus, h.slots, h.busy, h.open, h.diskPending = nil, nil, 0, 0, 0
	for _, g := range gpus {
		hg := &gpu{host: h, index: g.Index}
		for i := 0; i < g.Slots; i++ {
			s := &slot{id: int32(len(f.slots)), host: h, gpu: hg, index: i, cap: int64(g.SlotBytes), openPos: -1}
			s.class = f.class(s.cap)
			f.slots = append(f.slots, s)
			hg.slots = append(hg.slots, s)
			h.slots = append(h.slots, s)
		}
		h.gpus = append(h.gpus, hg)
	}
}

// refreshHost recomputes whether h is up and schedulable and moves its
// slots and blobs between the indexes accordingly.
func (f *Fleet) refreshHost(h *host) {
	up := h.reg != nil && h.reg.DownAt == nil && h.live
	f.setUp(h, up)
	sched := up && !h.reg.Drain && !h.draining && !h.degraded
	if sched != h.schedulable {
		h.schedulable = sched
		f.topo++
		for _, s := range h.slots {
			f.restatus(s)
		}
		if sched {
			f.gen++
		}
	}
}

// setUp counts h's blobs as peer sources while it is up.
func (f *Fleet) setUp(h *host, up bool) {
	if h.up == up {
		return
	}
	h.up = up
	if !h.peer {
		return
	}
	for _, e := range h.cache {
		f.countPeer(h, f.blobs[e.d], up)
	}
}

func (f *Fleet) countPeer(h *host, b *blob, add bool) {
	d := int32(1)
	if !add {
		d = -1
	}
	b.peers += d
	if h.rack >= 0 {
		if b.racks == nil {
			b.racks = make(map[int32]int32)
		}
		b.racks[h.rack] += d
		if b.racks[h.rack] == 0 {
			delete(b.racks, h.rack)
		}
	}
}

// --- heartbeats ---

// Heartbeat records a host's live state at time at: slots, residency
// (most recently used first, as agents send it), draining and degraded
// flags, and the cache inventory when the beat carries one (b.Cache not
// nil). It reports whether anything changed that could let a queued job
// start sooner.
func (f *Fleet) Heartbeat(b *proto.Heartbeat, at time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[b.HostID]
	if !ok {
		return false
	}
	before := f.gen
	h.lastBeat = at
	h.live = true
	h.draining, h.degraded = b.Draining, b.Degraded != ""
	for i := range b.Slots {
		st := &b.Slots[i]
		s := h.slotAt(st.GPU, st.Slot)
		if s == nil {
			continue
		}
		blocked := st.Blocked != ""
		changed := blocked != s.blocked
		if changed {
			f.topo++
		}
		s.blocked = blocked
		rep := make([]uint32, len(st.Resident))
		for k, d := range st.Resident {
			rep[len(rep)-1-k] = f.intern(d, 0).id // least recently used first
		}
		if !slices.Equal(rep, s.reported) {
			s.reported = rep
			changed = true
		}
		if changed {
			f.repredict(s)
			f.restatus(s)
			f.gen++
		}
	}
	if b.Cache != nil {
		f.setCache(h, b.Cache)
	}
	f.refreshHost(h)
	return f.gen != before
}

func (h *host) slotAt(g, i int) *slot {
	for _, hg := range h.gpus {
		if hg.index == g {
			if i >= 0 && i < len(hg.slots) {
				return hg.slots[i]
			}
			return nil
		}
	}
	return nil
}

// setCache replaces h's inventory, touching only the blobs that changed.
func (f *Fleet) setCache(h *host, list []proto.CachedBlob) {
	want := make([]cacheEntry, 0, len(list))
	for _, cb := range list {
		t := tierIndex(cb.Tier)
		if t != tRAM && t != tDisk {
			continue
		}
		want = append(want, cacheEntry{d: f.intern(cb.Digest, cb.Size).id, tier: uint8(t), pos: -1})
	}
	slices.SortFunc(want, func(a, b cacheEntry) int { return cmp.Or(cmp.Compare(a.d, b.d), cmp.Compare(a.tier, b.tier)) })
	// One entry per blob, its fastest tier.
	want = slices.CompactFunc(want, func(a, b cacheEntry) bool { return a.d == b.d })
	var gone []uint32
	i := 0
	for _, e := range h.cache {
		for i < len(want) && want[i].d < e.d {
			i++
		}
		if i >= len(want) || want[i].d != e.d {
			gone = append(gone, e.d)
		}
	}
	for _, d := range gone {
		f.dropCached(h, d)
	}
	for _, w := range want {
		f.putCached(h, w.d, w.tier)
	}
}

// SetCache replaces a host's whole cache inventory. It reports whether
// anything changed.
func (f *Fleet) SetCache(hostID string, list []proto.CachedBlob) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[hostID]
	if !ok {
		return false
	}
	before := f.gen
	f.setCache(h, list)
	return f.gen != before
}

// CacheDelta applies a change to a host's inventory: blobs added (or
// moved to another tier) and blobs removed. It reports whether anything
// changed.
func (f *Fleet) CacheDelta(hostID string, added []proto.CachedBlob, removed []proto.Digest) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hosts[hostID]
	if !ok {
		return false
	}
	before := f.gen
	for _, d := range removed {
		if id, ok := f.ids[d]; ok {
			f.dropCached(h, id)
		}
	}
	for _, cb := range added {
		t := tierIndex(cb.Tier)
		if t == tRAM || t == tDisk {
			f.putCached(h, f.intern(cb.Digest, cb.Size).id, uint8(t))
		}
	}
	return f.gen != before
}

// cachedTier returns the tier h caches blob d in, and false when none.
func (h *host) cachedTier(d uint32) (int, bool) {
	if int(d) >= len(h.tiers) || h.tiers[d] == 0 {
		return 0, false
	}
	return int(h.tiers[d] - 1), true
}

func (h *host) setTier(d uint32, tier uint8, held bool) {
	if !held {
		if int(d) < len(h.tiers) {
			h.tiers[d] = 0
		}
		return
	}
	if int(d) >= len(h.tiers) {
		h.tiers = append(h.tiers, make([]uint8, int(d)+1-len(h.tiers))...)
	}
	h.tiers[d] = tier + 1
}

func (f *Fleet) putCached(h *host, d uint32, tier uint8) {
	if e := h.cacheEntry(d); e != nil {
		if e.tier != tier {
			e.tier = tier
			h.setTier(d, tier, true)
			f.gen++
		}
		return
	}
	h.setTier(d, tier, true)
	i, _ := slices.BinarySearchFunc(h.cache, d, func(e cacheEntry, d uint32) int { return cmp.Compare(e.d, d) })
	h.cache = slices.Insert(h.cache, i, cacheEntry{d: d, tier: tier, pos: -1})
	b := f.blobs[d]
	b.holders.add(h, &h.cache[i])
	if h.up && h.peer {
		f.countPeer(h, b, true)
	}
	f.gen++
}

func (f *Fleet) dropCached(h *host, d uint32) {
	e := h.cacheEntry(d)
	if e == nil {
		return
	}
	b := f.blobs[d]
	b.holders.remove(e)
	if h.up && h.peer {
		f.countPeer(h, b, false)
	}
	h.setTier(d, 0, false)
	i, _ := slices.BinarySearchFunc(h.cache, d, func(e cacheEntry, d uint32) int { return cmp.Compare(e.d, d) })
	h.cache = slices.Delete(h.cache, i, i+1)
}

// Expire marks hosts whose last heartbeat is older than the grace as not
// live, so nothing is placed on a host that has gone quiet before the
// coordinator marks it down. It walks the hosts at most once a second.
func (f *Fleet) Expire(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expireLocked(now)
}

func (f *Fleet) expireLocked(now time.Time) {
	if now.Sub(f.lastExpire) < time.Second && !f.lastExpire.IsZero() {
		return
	}
	f.lastExpire = now
	for _, h := range f.hostOrder {
		if h.live && now.Sub(h.lastBeat) > f.cfg.Grace {
			h.live = false
			f.refreshHost(h)
		}
	}
}

// --- slots and their indexes ---

// restatus puts s in the indexes its state calls for.
func (f *Fleet) restatus(s *slot) {
	if s.host == nil {
		return
	}
	st := uint8(statusFull)
	if s.host.schedulable && !s.blocked {
		switch len(s.jobs) {
		case 0:
			st = statusOpen
		case 1:
			st = statusSoon
		}
	}
	bucket := min(s.gpu.busy, maxBucket)
	if st == s.status && (st != statusOpen || bucket == s.bucket) {
		return
	}
	f.setStatus(s, st)
	if st == statusOpen {
		f.gen++
	}
}

// setStatus moves s into the indexes of status st. A slot stays in the
// warm sets of its blobs while it is open or soon, so the most common
// change, open to soon and back as jobs come and go, touches none of them.
func (f *Fleet) setStatus(s *slot, st uint8) {
	old := s.status
	switch old {
	case statusOpen:
		s.class.buckets[s.bucket].remove(s)
		s.host.open--
		f.openCount--
	case statusSoon:
		s.class.soon.remove(s)
		f.soonCount--
	}
	if (old == statusFull) != (st == statusFull) {
		for _, r := range s.resident {
			b := f.blobs[r.d]
			if st == statusFull {
				b.avail.remove(s)
			} else {
				b.avail.add(s)
			}
		}
	}
	s.status = st
	switch st {
	case statusOpen:
		s.bucket = min(s.gpu.busy, maxBucket)
		s.class.buckets[s.bucket].add(s)
		s.host.open++
		f.openCount++
	case statusSoon:
		s.class.soon.add(s)
		f.soonCount++
	}
}

// unindexSlot takes s out of every index.
func (f *Fleet) unindexSlot(s *slot) { f.setStatus(s, statusFull) }

// repredict recomputes what s will hold once its jobs have loaded their
// models: its reported residency with each job's models loaded in turn,
// least recently used evicted first to fit the slot, as the worker does.
// Only the blobs that come or go move in the warm sets.
func (f *Fleet) repredict(s *slot) {
	res := slices.Clone(s.reported)
	for i, j := range s.jobs {
		res = f.loadInto(res, s.cap, j.models, s.host.comfy)
		if i == len(s.jobs)-1 && !s.host.comfy {
			res = f.warmInto(res, s.cap, j.warm)
		}
	}
	s.lru = res
	s.used = 0
	for _, d := range res {
		s.used += f.blobs[d].size
	}
	sorted := slices.Clone(res)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	set := func(b *blob) *slotSet {
		if s.status == statusFull {
			return nil
		}
		return &b.avail
	}
	next := make([]residentEntry, 0, len(sorted))
	i := 0
	for _, e := range s.resident {
		for i < len(sorted) && sorted[i] < e.d {
			next = append(next, residentEntry{d: sorted[i], pos: -1})
			i++
		}
		if i < len(sorted) && sorted[i] == e.d {
			next = append(next, e)
			i++
			continue
		}
		if ss := set(f.blobs[e.d]); ss != nil {
			ss.remove(s)
		}
	}
	for ; i < len(sorted); i++ {
		next = append(next, residentEntry{d: sorted[i], pos: -1})
	}
	old := s.resident
	s.resident = next
	for _, e := range next {
		if _, ok := slices.BinarySearchFunc(old, e.d, func(r residentEntry, d uint32) int { return cmp.Compare(r.d, d) }); ok {
			continue
		}
		if ss := set(f.blobs[e.d]); ss != nil {
			ss.add(s)
		}
	}
}

// loadInto returns res (least recently used first) after a job that needs
// models ran in a slot of capBytes: the models move to the most recent
// end, and the least recently used others leave until everything fits
// (all of them, for a ComfyUI server, which frees everything at once).
func (f *Fleet) loadInto(res []uint32, capBytes int64, models []uint32, freeAll bool) []uint32 {
	res = slices.DeleteFunc(res, func(d uint32) bool { return slices.Contains(models, d) })
	var used, need int64
	for _, d := range res {
		used += f.blobs[d].size
	}
	for _, d := range models {
		need += f.blobs[d].size
	}
	if freeAll && capBytes > 0 && used+need > capBytes {
		return append(res[:0], models...)
	}
	n := 0
	for n < len(res) && capBytes > 0 && used+need > capBytes {
		used -= f.blobs[res[n]].size
		n++
	}
	res = append(res[n:], models...)
	return res
}

// warmInto adds to res what of warm fits in capBytes beside it: a slot
// warms only into room it has.
func (f *Fleet) warmInto(res []uint32, capBytes int64, warm []uint32) []uint32 {
	if len(warm) == 0 {
		return res
	}
	var used int64
	for _, d := range res {
		used += f.blobs[d].size
	}
	for _, d := range warm {
		if sz := f.blobs[d].size; !slices.Contains(res, d) && used+sz <= capBytes {
			res = append(res, d)
			used += sz
		}
	}
	return res
}

// --- jobs ---

// SetJob records a job's transition as the FSM applied it: a placement
// puts it on its slot, running starts its clock, and a terminal state or a
// requeue takes it off. Jobs without a placement are not the fleet's
// concern (the queue is State's).
func (f *Fleet) SetJob(j *proto.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setJobLocked(j)
}

func (f *Fleet) setJobLocked(j *proto.Job) {
	e := f.jobs[j.ID]
	if j.State.Terminal() || j.Placement == nil {
		if e != nil {
			f.finish(e, j)
		}
		if j.State == proto.JobSucceeded && j.RunS > 0 {
			f.est.observe(f.jobClass(j), j.RunS)
		}
		return
	}
	p := j.Placement
	if e != nil && (e.slot.host == nil || e.slot.host.id != p.Host || e.slot.gpu.index != p.GPU || e.slot.index != p.Slot || e.epoch != 0 && e.epoch != p.Epoch) {
		f.finish(e, nil)
		e = nil
	}
	if e == nil {
		h := f.hosts[p.Host]
		if h == nil {
			return
		}
		s := h.slotAt(p.GPU, p.Slot)
		if s == nil {
			return
		}
		e = f.newJobEntry(j, s, p)
		f.attach(e)
	}
	e.job, e.epoch = j, p.Epoch
	if j.State == proto.JobRunning || j.State == proto.JobUploading {
		if e.runningSince.IsZero() {
			e.runningSince = runningSince(j)
			f.doneReading(e)
		}
	}
}

// runningSince is when j last entered the running state.
func runningSince(j *proto.Job) time.Time {
	for i := len(j.History) - 1; i >= 0; i-- {
		if ev := j.History[i]; ev.Type == proto.EventState && ev.State == proto.JobRunning {
			return ev.Time
		}
	}
	if j.StartedAt != nil {
		return *j.StartedAt
	}
	return j.Placement.PlacedAt
}

func (f *Fleet) jobClass(j *proto.Job) uint32 {
	var best *blob
	for _, m := range j.Models {
		b := f.intern(m.Digest, m.Size)
		if best == nil || b.size > best.size {
			best = b
		}
	}
	if best == nil {
		return noClass
	}
	return best.id
}

const noClass = ^uint32(0)

func (f *Fleet) newJobEntry(j *proto.Job, s *slot, p *proto.Placement) *jobEntry {
	e := &jobEntry{id: j.ID, job: j, slot: s, placedAt: p.PlacedAt, loadS: max(p.EstimateS-p.QueueWaitS, 0), class: noClass}
	for _, m := range p.Models {
		if m.Tier == proto.TierDisk {
			e.diskBytes += m.SizeByte
		}
	}
	var best int64 = -1
	for _, m := range j.Models {
		b := f.intern(m.Digest, m.Size)
		if !slices.Contains(e.models, b.id) {
			e.models = append(e.models, b.id)
		}
		if b.size > best {
			best, e.class = b.size, b.id
		}
	}
	return e
}

// attach puts e on its slot and updates the slot, GPU and host counts.
func (f *Fleet) attach(e *jobEntry) {
	s := e.slot
	f.jobs[e.id] = e
	s.jobs = append(s.jobs, e)
	if s.host != nil {
		s.host.diskPending += e.diskBytes
	}
	if len(s.jobs) == 1 {
		f.setBusy(s, 1)
	}
	f.repredict(s)
	f.restatus(s)
}

// finish takes e off its slot. When the job ran (j is its final state and
// it was seen running), what it loaded stays resident: the slot's reported
// residency learns it now rather than at the next heartbeat.
func (f *Fleet) finish(e *jobEntry, j *proto.Job) {
	s := e.slot
	delete(f.jobs, e.id)
	if s.host == nil {
		return
	}
	f.doneReading(e)
	s.jobs = slices.DeleteFunc(s.jobs, func(x *jobEntry) bool { return x == e })
	if j != nil && !e.runningSince.IsZero() {
		s.reported = f.loadInto(slices.Clone(s.reported), s.cap, e.models, s.host.comfy)
	}
	if len(s.jobs) == 0 {
		f.setBusy(s, -1)
	}
	f.repredict(s)
	f.restatus(s)
	f.gen++
}

// doneReading takes e's disk reads off its host's pending bytes: it runs,
// so it has read what it needed.
func (f *Fleet) doneReading(e *jobEntry) {
	if e.slot.host != nil {
		e.slot.host.diskPending -= e.diskBytes
	}
	e.diskBytes = 0
}

// setBusy changes the busy counts of s's GPU and host by d, moving the
// GPU's open slots to their new bucket.
func (f *Fleet) setBusy(s *slot, d int) {
	s.gpu.busy += d
	s.host.busy += d
	for _, o := range s.gpu.slots {
		if o != s && o.status == statusOpen {
			f.restatus(o)
		}
	}
}

// ResetJobs replaces every job the fleet knows with active (a new leader,
// a restored snapshot): the slots' job lists are rebuilt from them.
func (f *Fleet) ResetJobs(active []*proto.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.jobs {
		f.finish(e, nil)
	}
	placed := slices.DeleteFunc(slices.Clone(active), func(j *proto.Job) bool { return j.Placement == nil || j.State.Terminal() })
	slices.SortFunc(placed, func(a, b *proto.Job) int { return cmp.Compare(a.Placement.Epoch, b.Placement.Epoch) })
	for _, j := range placed {
		f.setJobLocked(j)
	}
}

// unplace drops a placement a pass made that the planner refused.
func (f *Fleet) unplace(id string) {
	if e := f.jobs[id]; e != nil {
		f.finish(e, nil)
	}
}
