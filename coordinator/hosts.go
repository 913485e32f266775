package coordinator

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// liveHosts is the leader's in-memory view of each host's last heartbeat.
// It is deliberately not replicated: it changes every few seconds and a new
// leader rebuilds it from the next round of heartbeats.
//
// Each host's cache inventory is kept as a list sorted by digest (then
// tier), with the version the host's agent gave it (proto.InventoryDelta).
// The list is never changed in place: a change builds a new one, so get
// hands out the current list without copying, and a beat that changes
// nothing (most of them) allocates nothing. Digests are interned: ten
// thousand hosts holding the same few hundred models share one string per
// model instead of keeping one each.
//
// Thousands of hosts beat at once, so each host has its own lock, and the
// work a beat needs before it can be compared with what is held (sorting
// a whole list) is done before taking it.
type liveHosts struct {
	now  func() time.Time
	mu   sync.RWMutex // guards the map; each liveHost guards itself
	last map[string]*liveHost
	// digests interns the digests held in inventories. It is cleared
	// when it grows past maxInterned, so the digests of blobs no host
	// holds any longer cannot pile up; what is held keeps its strings.
	internMu sync.Mutex
	digests  map[proto.Digest]proto.Digest
	// follow, if set, is told each beat with its inventory change while
	// the host's entry is locked, so whoever follows (the scheduler's
	// fleet) sees one host's beats in the order they were applied.
	follow func(b *proto.Heartbeat, change inventoryChange)
}

// maxInterned bounds liveHosts.digests: many times the distinct blobs of
// any real fleet.
const maxInterned = 1 << 20

type liveHost struct {
	mu   sync.Mutex
	beat proto.Heartbeat // the last beat, without its inventory
	at   time.Time
	// inv is the inventory, sorted by digest then tier; nil until the
	// host sent one. Shared with get's callers: replaced, never modified.
	inv []proto.CachedBlob
	// ver is inv's version; 0 when inv came from a beat's Cache list
	// (the older protocol), which has none.
	ver uint64
}

// inventoryChange is what a beat changed in a host's inventory, for the
// scheduler's fleet index. Changed is false when nothing did. When Full is
// set, Blobs is the whole inventory now (sorted by digest, then tier) and
// replaces the old one; otherwise Added (new blobs and blobs whose tier
// changed) and Removed say what changed. Only real changes are listed: a
// blob "added" in the tier it already had, or "removed" though it was not
// held, is left out. The slices must not be modified.
type inventoryChange struct {
	Changed bool
	Full    bool
	Blobs   []proto.CachedBlob
	Added   []proto.CachedBlob
	Removed []proto.Digest
}

func newLiveHosts(now func() time.Time) *liveHosts {
	return &liveHosts{now: now, last: make(map[string]*liveHost), digests: make(map[proto.Digest]proto.Digest)}
}

// host returns id's entry, creating it if need be.
func (h *liveHosts) host(id string) *liveHost {
	h.mu.RLock()
	l := h.last[id]
	h.mu.RUnlock()
	if l != nil {
		return l
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if l = h.last[id]; l == nil {
		l = &liveHost{}
		h.last[id] = l
	}
	return l
}

// apply records a beat: slots and flags, and its inventory change (b must
// have passed b.Validate()). It returns what changed in the inventory (for
// the scheduler's fleet index) and the answer for the agent.
//
// A beat with Cache replaces the inventory and leaves it without a version
// (ack 0): that is the older agents' protocol, and they ignore the ack. A
// beat with Inventory is applied as proto.InventoryDelta describes: a full
// one unless it is older than what is held, a delta only onto its Base.
// A beat with neither changes nothing. Whatever was not applied, the ack
// names the version held, and the agent works out what to send next.
func (h *liveHosts) apply(b *proto.Heartbeat) (inventoryChange, proto.HeartbeatAck) {
	d := b.Inventory
	var list []proto.CachedBlob // a whole inventory, sorted
	switch {
	case b.Cache != nil:
		list = sortedCopy(b.Cache)
	case d != nil && d.Full():
		list = sortedCopy(d.Added)
	}
	beat := *b
	beat.Cache, beat.Inventory = nil, nil
	l := h.host(b.HostID)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.beat, l.at = beat, h.now()
	var change inventoryChange
	switch {
	case b.Cache != nil:
		change = h.replaceLocked(l, list)
		l.ver = 0
	case d == nil:
	case d.Full():
		if l.ver != 0 && d.Version <= l.ver {
			break // a late copy of an older beat
		}
		change = h.replaceLocked(l, list)
		l.ver = d.Version
	case d.Base == l.ver && l.ver != 0:
		change = h.patchLocked(l, d.Added, d.Removed)
		l.ver = d.Version
	}
	if h.follow != nil {
		h.follow(&beat, change)
	}
	return change, proto.HeartbeatAck{InventoryVersion: l.ver}
}

// sortedCopy returns list sorted by digest, then tier, in a new slice.
func sortedCopy(list []proto.CachedBlob) []proto.CachedBlob {
	inv := slices.Clone(list)
	if inv == nil {
		inv = []proto.CachedBlob{}
	}
	if !slices.IsSortedFunc(inv, compareBlobs) {
		slices.SortFunc(inv, compareBlobs)
	}
	return inv
}

// replaceLocked makes inv, sorted, l's inventory and reports the change.
func (h *liveHosts) replaceLocked(l *liveHost, inv []proto.CachedBlob) inventoryChange {
	if l.inv != nil && slices.Equal(inv, l.inv) {
		return inventoryChange{}
	}
	h.internMu.Lock()
	for i := range inv {
		inv[i] = h.internBlobLocked(inv[i])
	}
	h.internMu.Unlock()
	l.inv = inv
	return inventoryChange{Changed: true, Full: true, Blobs: inv}
}

// patchLocked applies a delta to l's inventory, building a new list, and
// reports the change. The delta names each digest once (Validate), and a
// versioned inventory holds each digest once, so the two merge in one pass.
func (h *liveHosts) patchLocked(l *liveHost, added []proto.CachedBlob, removed []proto.Digest) inventoryChange {
	var c inventoryChange
	add := sortedCopy(added)
	drop := make(map[proto.Digest]struct{}, len(removed))
	for _, d := range removed {
		drop[d] = struct{}{}
	}
	h.internMu.Lock()
	defer h.internMu.Unlock()
	inv := make([]proto.CachedBlob, 0, len(l.inv)+len(add))
	i := 0
	for _, cur := range l.inv {
		for i < len(add) && add[i].Digest < cur.Digest {
			c.Added = append(c.Added, h.internBlobLocked(add[i]))
			inv = append(inv, c.Added[len(c.Added)-1])
			i++
		}
		if i < len(add) && add[i].Digest == cur.Digest {
			nb := add[i]
			i++
			if nb.Tier != cur.Tier || nb.Size != cur.Size {
				cur = proto.CachedBlob{Digest: cur.Digest, Size: nb.Size, Tier: internTier(nb.Tier)}
				c.Added = append(c.Added, cur)
			}
			inv = append(inv, cur)
			continue
		}
		if _, gone := drop[cur.Digest]; gone {
			c.Removed = append(c.Removed, cur.Digest)
			continue
		}
		inv = append(inv, cur)
	}
	for ; i < len(add); i++ {
		c.Added = append(c.Added, h.internBlobLocked(add[i]))
		inv = append(inv, c.Added[len(c.Added)-1])
	}
	if len(c.Added) > 0 || len(c.Removed) > 0 {
		l.inv, c.Changed = inv, true
	}
	return c
}

// internBlobLocked returns cb with its digest and tier interned. Callers
// hold internMu.
func (h *liveHosts) internBlobLocked(cb proto.CachedBlob) proto.CachedBlob {
	d, ok := h.digests[cb.Digest]
	if !ok {
		if len(h.digests) >= maxInterned {
			clear(h.digests)
		}
		d = cb.Digest
		h.digests[d] = d
	}
	return proto.CachedBlob{Digest: d, Size: cb.Size, Tier: internTier(cb.Tier)}
}

// internTier returns the package's constant for the two tiers an
// inventory holds, so that the decoder's copy can be collected.
func internTier(t proto.Tier) proto.Tier {
	switch t {
	case proto.TierRAM:
		return proto.TierRAM
	case proto.TierDisk:
		return proto.TierDisk
	}
	return t
}

func compareBlobs(a, b proto.CachedBlob) int {
	return cmp.Or(cmp.Compare(a.Digest, b.Digest), cmp.Compare(a.Tier, b.Tier), cmp.Compare(a.Size, b.Size))
}

// get returns the host's last heartbeat, with Cache its whole inventory
// (sorted by digest, then tier; nil if it never sent one, and not to be
// modified), when it arrived, and whether that is within grace.
func (h *liveHosts) get(id string, grace time.Duration) (proto.Heartbeat, time.Time, bool) {
	h.mu.RLock()
	l, ok := h.last[id]
	h.mu.RUnlock()
	if !ok {
		return proto.Heartbeat{}, time.Time{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.beat
	b.Cache = l.inv
	return b, l.at, h.now().Sub(l.at) <= grace
}

// view combines a registration with its live state for the API; active
// is how many jobs are placed on the host and not finished.
func (s *Server) hostView(h *proto.Host, active int) proto.HostView {
	v := proto.HostView{Host: *h, Status: proto.HostDown, Slots: []proto.SlotState{}, Cache: []proto.CachedBlob{}, ActiveJobs: active}
	beat, at, alive := s.hosts.get(h.ID, s.cfg.HeartbeatGrace)
	if !at.IsZero() {
		v.LastHeartbeat = &at
		v.Slots, v.GPUStates = beat.Slots, beat.GPUs
		if beat.Cache != nil {
			v.Cache = beat.Cache
		}
	}
	switch {
	case h.DownAt != nil:
		// Marked down in the log (its jobs were requeued) until it
		// registers again, whatever its last beat says.
	case alive && (h.Drain || beat.Draining):
		// An operator's drain, or an agent that is shutting down.
		v.Status = proto.HostDraining
		if active == 0 {
			v.Status = proto.HostDrained
		}
	case alive && beat.Degraded != "":
		v.Status = proto.HostDegraded
		v.DegradedReason = beat.Degraded
	case alive:
		v.Status = proto.HostReady
	}
	return v
}
