package scheduler

// The indexes are ordered sets with O(1) add and remove and no maps: each
// member records its own position in the one set of a kind it can be in at
// a time (a slot's position in the open set of its size class, a resident
// model's position in that model's warm set). Removal swaps the last member
// into the hole, so the order depends only on the sequence of operations:
// two fleets fed the same events iterate alike, which keeps the simulator
// deterministic where a Go map's order would not.

// slotSet is an ordered set of slots whose positions live in the slots.
type slotSet struct {
	items []*slot
	// pos returns where a member keeps its position in this kind of set.
	pos func(s *slot) *int32
}

func (ss *slotSet) add(s *slot) {
	p := ss.pos(s)
	if *p >= 0 {
		return
	}
	*p = int32(len(ss.items))
	ss.items = append(ss.items, s)
}

func (ss *slotSet) remove(s *slot) {
	p := ss.pos(s)
	i := *p
	if i < 0 {
		return
	}
	last := ss.items[len(ss.items)-1]
	ss.items[i] = last
	*ss.pos(last) = i
	ss.items[len(ss.items)-1] = nil
	ss.items = ss.items[:len(ss.items)-1]
	*p = -1
}

func (ss *slotSet) len() int { return len(ss.items) }

// hostSet is an ordered set of hosts holding one blob; a host keeps its
// position in its cache entry for that blob.
type hostSet struct {
	items []*host
	d     uint32
}

func (hs *hostSet) add(h *host, e *cacheEntry) {
	if e.pos >= 0 {
		return
	}
	e.pos = int32(len(hs.items))
	hs.items = append(hs.items, h)
}

func (hs *hostSet) remove(e *cacheEntry) {
	i := e.pos
	if i < 0 {
		return
	}
	last := hs.items[len(hs.items)-1]
	hs.items[i] = last
	if le := last.cacheEntry(hs.d); le != nil {
		le.pos = i
	}
	hs.items[len(hs.items)-1] = nil
	hs.items = hs.items[:len(hs.items)-1]
	e.pos = -1
}
