package gossip

// The local side of cache inventories: publishing this member's changes and
// answering who holds what. See doc.go for how they travel.

import "github.com/hearth-gpu/hearth/proto"

// SetInventory replaces this member's whole published inventory (at start,
// after a rescan, or now and then to catch what no single change
// reported). What changed goes out as broadcasts, and the new version in
// the meta; an unchanged inventory sends nothing.
func (p *Pool) SetInventory(inv Inventory) error {
	ents, err := entriesOf(inv, 0)
	if err != nil {
		return err
	}
	p.mu.Lock()
	v := p.local.version + 1
	var msgs []outgoing
	for d, e := range ents {
		if cur, ok := p.local.ents[d]; ok && sameEntry(cur, e) {
			ents[d] = cur
			continue
		}
		e.ver = v
		ents[d] = e
		msgs = append(msgs, p.outgoingLocked(d, e))
	}
	for d := range p.local.ents {
		if _, ok := ents[d]; !ok {
			msgs = append(msgs, p.outgoingLocked(d, entry{ver: v}))
		}
	}
	if len(msgs) == 0 {
		// Nothing changed: no new version, no meta update. Callers may
		// republish on a timer.
		p.mu.Unlock()
		return nil
	}
	p.local.version = v
	p.local.ents, p.local.base = ents, v
	p.meta.InventoryVersion = v
	p.metaBytes = p.meta.encode()
	p.mu.Unlock()
	p.send(msgs)
	select {
	case p.metaKick <- struct{}{}:
	default:
	}
	return nil
}

// Added publishes that d is now whole in tier (ram or disk). Adding to a
// tier drops d's chunk list: the blob is complete.
func (p *Pool) Added(d proto.Digest, tier proto.Tier) error {
	m, err := maskOf(tier)
	if err != nil {
		return err
	}
	return p.change(d, func(e *entry) error {
		e.tiers = e.tiers&^maskPulling | m
		e.chunks = nil
		return nil
	})
}

// Evicted publishes that d left tier. Evicting from disk also drops d's
// chunk list, so an abandoned download can be withdrawn this way.
func (p *Pool) Evicted(d proto.Digest, tier proto.Tier) error {
	m, err := maskOf(tier)
	if err != nil {
		return err
	}
	return p.change(d, func(e *entry) error {
		e.tiers &^= m
		if m == maskDisk {
			e.tiers &^= maskPulling
			e.chunks = nil
		}
		return nil
	})
}

// ChunksHave publishes that chunks idx of a blob still downloading are
// written, adding to those published before; with no indexes it publishes
// that the download has started. Indexes are the caller's (the peer fetch
// protocol's chunk size), from 0 to MaxChunks-1. Evicted(d, disk)
// withdraws an abandoned download.
func (p *Pool) ChunksHave(d proto.Digest, idx []int) error {
	if _, err := bitmapAdd(nil, idx); err != nil {
		return err
	}
	return p.change(d, func(e *entry) error {
		if e.tiers&maskWhole != 0 {
			return nil // already whole
		}
		c, err := bitmapAdd(e.chunks, idx)
		e.chunks = c
		e.tiers |= maskPulling
		return err
	})
}

func (p *Pool) change(d proto.Digest, f func(*entry) error) error {
	s, err := sumOf(d)
	if err != nil {
		return err
	}
	p.mu.Lock()
	cur := p.local.ents[s]
	next := cur
	if err := f(&next); err != nil {
		p.mu.Unlock()
		return err
	}
	if sameEntry(cur, next) {
		p.mu.Unlock()
		return nil
	}
	p.local.version++
	next.ver = p.local.version
	p.local.base = next.ver
	if next.empty() {
		delete(p.local.ents, s)
	} else {
		p.local.ents[s] = next
	}
	msg := p.outgoingLocked(s, next)
	p.mu.Unlock()
	p.send([]outgoing{msg})
	return nil
}

// Holders returns the alive members other than this one that hold d, the
// cheapest source first.
func (p *Pool) Holders(d proto.Digest) []Holder {
	s, err := sumOf(d)
	if err != nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var hs []Holder
	for name, r := range p.remote {
		m := p.members[name]
		if m == nil || m.State != StateAlive {
			continue
		}
		e, ok := r.ents[s]
		if !ok || e.empty() {
			continue
		}
		h := Holder{Member: m.clone()}
		switch {
		case e.tiers&maskWhole == 0 && e.tiers&maskPulling == 0:
			continue // left behind by an older peer: holds nothing usable
		case e.tiers&maskRAM != 0:
			h.Tier = proto.TierRAM
		case e.tiers&maskDisk != 0:
			h.Tier = proto.TierDisk
		default:
			h.Chunks = bitmapIndexes(e.chunks)
		}
		hs = append(hs, h)
	}
	sortHolders(hs)
	return hs
}

// Inventory returns what node (this one included) holds, as far as this
// member knows.
func (p *Pool) Inventory(node string) (Inventory, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if node == p.cfg.NodeName {
		return p.local.inventory(), true
	}
	r, ok := p.remote[node]
	if !ok {
		return Inventory{}, false
	}
	return r.inventory(), true
}
