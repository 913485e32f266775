package cachefs

import "github.com/hearth-gpu/hearth/proto"

// Budget is the store's eviction policy over a byte budget, without the
// files: the fleet simulator models each host's cache with it, so a
// simulated host evicts the blobs a real Store with the same budget would
// after the same Puts, uses, pins and removals. It drives the policy step
// for step as Store does (commit in put.go, touchLocked, Pin, Remove).
//
// A Budget is not safe for concurrent use: the simulator runs one event at
// a time, and a lock would only cost it.
type Budget struct {
	max    int64 // 0: unlimited, as Config.MaxBytes
	used   int64
	policy policy
	blobs  map[proto.Digest]*budgetBlob
}

type budgetBlob struct {
	size int64
	pins int
}

// NewBudget returns an empty Budget of maxBytes under the store's default
// policy. Zero means unlimited, as in Config.MaxBytes; a negative budget
// panics.
func NewBudget(maxBytes int64) *Budget { return newBudgetPolicy(maxBytes, defaultPolicy) }

// newBudgetPolicy is NewBudget under the policy newPolicy makes; tests use
// it to show where LRU would differ.
func newBudgetPolicy(maxBytes int64, newPolicy func(int64) policy) *Budget {
	if maxBytes < 0 {
		panic("cachefs: NewBudget: negative budget; use 0 for unlimited")
	}
	return &Budget{max: maxBytes, policy: newPolicy(maxBytes), blobs: make(map[proto.Digest]*budgetBlob)}
}

// Has reports whether d is held, without counting a use.
func (b *Budget) Has(d proto.Digest) bool {
	_, ok := b.blobs[d]
	return ok
}

// Access records a use of d, as the store's Path does, and reports whether
// d was held.
func (b *Budget) Access(d proto.Digest) bool {
	if _, ok := b.blobs[d]; !ok {
		return false
	}
	b.policy.access(d)
	return true
}

// Admit inserts d of size bytes, evicting the policy's victims (never a
// pinned blob) until it fits, and returns them in eviction order. Where the
// store's Put would fail, with ErrTooLarge (size over the whole budget) or
// ErrNoSpace (every unpinned blob would not make room), Admit returns false
// and evicts nothing; like the store, the policy may have spent use counts
// and promoted blobs while looking for victims on the way to ErrNoSpace.
// Admitting a held digest records a use, as Put does, whatever the size.
func (b *Budget) Admit(d proto.Digest, size int64) (evicted []proto.Digest, ok bool) {
	if b.Access(d) {
		return nil, true
	}
	if size < 0 || (b.max > 0 && size > b.max) {
		return nil, false
	}
	var victims []proto.Digest
	if need := b.used + size - b.max; b.max > 0 && need > 0 {
		// As chooseVictims: a digest not held counts as pinned.
		victims = b.policy.victims(need, func(v proto.Digest) bool {
			e, ok := b.blobs[v]
			return !ok || e.pins > 0
		})
		var freed int64
		for _, v := range victims {
			freed += b.blobs[v].size
		}
		if freed < need {
			return nil, false
		}
	}
	// The new blob first, then the victims, in the order commit uses.
	b.blobs[d] = &budgetBlob{size: size}
	b.policy.admit(d, size)
	b.used += size
	for _, v := range victims {
		b.drop(v)
	}
	return victims, true
}

// Pin keeps d from being evicted or removed until unpin is called, and
// reports whether d was held. Pins nest; unpin is idempotent and does
// nothing when ok is false.
func (b *Budget) Pin(d proto.Digest) (unpin func(), ok bool) {
	e, ok := b.blobs[d]
	if !ok {
		return func() {}, false
	}
	e.pins++
	done := false
	return func() {
		if !done {
			done = true
			e.pins--
		}
	}, true
}

// Remove drops d and reports whether it did: like the store's Remove it
// refuses a pinned blob, and a digest not held is nothing to remove.
func (b *Budget) Remove(d proto.Digest) bool {
	e, ok := b.blobs[d]
	if !ok || e.pins > 0 {
		return false
	}
	b.drop(d)
	return true
}

// drop forgets d, telling the policy as evictLocked does.
func (b *Budget) drop(d proto.Digest) {
	b.used -= b.blobs[d].size
	delete(b.blobs, d)
	b.policy.remove(d)
}

// Used is the bytes of the blobs held.
func (b *Budget) Used() int64 { return b.used }

// Len is the number of blobs held.
func (b *Budget) Len() int { return len(b.blobs) }
