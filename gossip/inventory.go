package gossip

import (
	"fmt"
	"slices"
	"sort"

	"github.com/hearth-gpu/hearth/proto"
)

// MaxChunks bounds chunk indexes in ChunksHave: a chunk set travels as a
// bitmap, and 65,536 chunks is 8 KiB, already too big for a UDP broadcast
// (push/pull still carries it).
const MaxChunks = 1 << 16

// Inventory is what one member's cache holds.
type Inventory struct {
	// Version counts changes to the inventory; the Pool sets it, and
	// SetInventory ignores it.
	Version uint64
	// RAM and Disk list the whole, verified blobs in each tier. A blob
	// resident in RAM is normally on disk too, and listed in both.
	RAM  []proto.Digest
	Disk []proto.Digest
	// Chunks lists, for blobs still downloading, the chunk indexes already
	// written, which a peer may fetch before the blob is complete. A blob
	// listed with no indexes is one this member has started to download:
	// peers pulling it too share the origin's chunks out among themselves.
	Chunks map[proto.Digest][]int
}

// Holder is a member that holds a blob, whole or in part.
type Holder struct {
	Member Member
	// Tier is the fastest tier holding the whole blob (ram or disk), or ""
	// if the member is still downloading it and holds only Chunks (perhaps
	// none yet).
	Tier   proto.Tier
	Chunks []int
}

type tierMask uint8

const (
	maskRAM tierMask = 1 << iota
	maskDisk
	// maskPulling marks a blob the member is downloading, so that a
	// download that has no chunk yet is still known to its peers.
	maskPulling
	maskWhole = maskRAM | maskDisk
	maskKnown = maskRAM | maskDisk | maskPulling
)

func maskOf(t proto.Tier) (tierMask, error) {
	switch t {
	case proto.TierRAM:
		return maskRAM, nil
	case proto.TierDisk:
		return maskDisk, nil
	}
	return 0, fmt.Errorf("gossip: tier %q is not published; use %q or %q", t, proto.TierRAM, proto.TierDisk)
}

// entry is one member's state of one digest at version ver. An empty entry
// is a tombstone: it keeps an eviction from being undone by an older
// message until a snapshot covers it.
type entry struct {
	ver    uint64
	tiers  tierMask
	chunks []byte // bitmap, bit i of byte i/8 set if chunk i is held
}

func (e entry) empty() bool { return e.tiers == 0 && len(e.chunks) == 0 }

// record is what this member knows of one member's inventory.
//
// Versions are per member and only grow within an epoch (the member's start
// time, so a restarted member's versions win over its old ones). The record
// is complete through base: every change up to base is reflected. Entries
// may be newer than base, from broadcasts that arrived since; a change is
// applied only if it is newer than both base and the entry it replaces, so
// messages may arrive late, twice or out of order and still converge.
type record struct {
	epoch   uint64
	base    uint64
	version uint64 // highest version applied
	ents    map[sum]entry
}

func newRecord(epoch uint64) *record { return &record{epoch: epoch, ents: map[sum]entry{}} }

// apply takes one broadcast change; it reports whether it was news, which
// is what decides whether to pass it on.
func (r *record) apply(epoch uint64, d sum, e entry) bool {
	if epoch < r.epoch {
		return false
	}
	if epoch > r.epoch {
		*r = *newRecord(epoch)
	}
	if e.ver <= r.base {
		return false
	}
	if cur, ok := r.ents[d]; ok && e.ver <= cur.ver {
		return false
	}
	r.ents[d] = e
	r.version = max(r.version, e.ver)
	return true
}

// merge takes a snapshot from push/pull.
func (r *record) merge(s snapshot) {
	if s.epoch < r.epoch {
		return
	}
	if s.epoch > r.epoch {
		*r = *newRecord(s.epoch)
	}
	if s.base < r.base {
		// Still take its entries that are newer than ours.
		for d, e := range s.ents {
			r.apply(s.epoch, d, e)
		}
		return
	}
	for d, cur := range r.ents {
		if _, ok := s.ents[d]; !ok && cur.ver <= s.base {
			// The snapshot is complete through s.base and lacks d:
			// d went away after cur was made.
			delete(r.ents, d)
		}
	}
	old := r.base
	for d, e := range s.ents {
		cur, ok := r.ents[d]
		if (ok && e.ver > cur.ver) || (!ok && e.ver > old) {
			r.ents[d] = e
			r.version = max(r.version, e.ver)
		}
	}
	r.base = s.base
	r.version = max(r.version, s.base)
	for d, e := range r.ents {
		if e.empty() && e.ver <= r.base {
			delete(r.ents, d)
		}
	}
}

// snapshot copies r for push/pull: tombstones newer than base must travel,
// or the receiver could not tell an eviction from an entry it never had.
func (r *record) snapshot(node string) snapshot {
	s := snapshot{node: node, epoch: r.epoch, base: r.base, ents: make(map[sum]entry, len(r.ents))}
	for d, e := range r.ents {
		if !e.empty() || e.ver > r.base {
			s.ents[d] = e
		}
	}
	return s
}

func (r *record) inventory() Inventory {
	inv := Inventory{Version: r.version}
	for d, e := range r.ents {
		dg := d.digest()
		if e.tiers&maskRAM != 0 {
			inv.RAM = append(inv.RAM, dg)
		}
		if e.tiers&maskDisk != 0 {
			inv.Disk = append(inv.Disk, dg)
		}
		if e.tiers&maskWhole == 0 && e.tiers&maskPulling != 0 {
			if inv.Chunks == nil {
				inv.Chunks = map[proto.Digest][]int{}
			}
			inv.Chunks[dg] = bitmapIndexes(e.chunks)
		}
	}
	slices.Sort(inv.RAM)
	slices.Sort(inv.Disk)
	return inv
}

// entriesOf turns an Inventory into entries at version ver.
func entriesOf(inv Inventory, ver uint64) (map[sum]entry, error) {
	ents := map[sum]entry{}
	add := func(ds []proto.Digest, m tierMask) error {
		for _, d := range ds {
			s, err := sumOf(d)
			if err != nil {
				return err
			}
			e := ents[s]
			e.ver, e.tiers = ver, e.tiers|m
			ents[s] = e
		}
		return nil
	}
	if err := add(inv.RAM, maskRAM); err != nil {
		return nil, err
	}
	if err := add(inv.Disk, maskDisk); err != nil {
		return nil, err
	}
	for d, idx := range inv.Chunks {
		s, err := sumOf(d)
		if err != nil {
			return nil, err
		}
		e := ents[s]
		if e.chunks, err = bitmapAdd(e.chunks, idx); err != nil {
			return nil, err
		}
		if e.tiers&maskWhole != 0 {
			e.chunks = nil // whole blobs need no chunk list
		} else {
			e.tiers |= maskPulling
		}
		e.ver = ver
		ents[s] = e
	}
	return ents, nil
}

func sameEntry(a, b entry) bool {
	return a.tiers == b.tiers && slices.Equal(a.chunks, b.chunks)
}

func bitmapAdd(bm []byte, idx []int) ([]byte, error) {
	bm = slices.Clone(bm)
	for _, i := range idx {
		if i < 0 || i >= MaxChunks {
			return nil, fmt.Errorf("gossip: chunk index %d is outside [0, %d)", i, MaxChunks)
		}
		for len(bm) <= i/8 {
			bm = append(bm, 0)
		}
		bm[i/8] |= 1 << (i % 8)
	}
	return trimBitmap(bm), nil
}

func trimBitmap(bm []byte) []byte {
	for len(bm) > 0 && bm[len(bm)-1] == 0 {
		bm = bm[:len(bm)-1]
	}
	if len(bm) == 0 {
		return nil
	}
	return bm
}

func bitmapIndexes(bm []byte) []int {
	var idx []int
	for i, b := range bm {
		for j := range 8 {
			if b&(1<<j) != 0 {
				idx = append(idx, i*8+j)
			}
		}
	}
	return idx
}

// sortHolders puts the cheapest source first: RAM, then disk, then partial
// holders with the most chunks; names break ties so the order is stable.
func sortHolders(hs []Holder) {
	rank := map[proto.Tier]int{proto.TierRAM: 0, proto.TierDisk: 1, "": 2}
	sort.Slice(hs, func(i, j int) bool {
		a, b := hs[i], hs[j]
		if rank[a.Tier] != rank[b.Tier] {
			return rank[a.Tier] < rank[b.Tier]
		}
		if len(a.Chunks) != len(b.Chunks) {
			return len(a.Chunks) > len(b.Chunks)
		}
		return a.Member.Name < b.Member.Name
	})
}
