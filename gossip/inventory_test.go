package gossip

import (
	"slices"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

func TestRecordConvergesOutOfOrder(t *testing.T) {
	t.Parallel()
	d := sum{1}
	added := entry{ver: 5, tiers: maskDisk}
	evicted := entry{ver: 6}
	r := newRecord(1)
	if !r.apply(1, d, evicted) {
		t.Fatal("eviction not applied")
	}
	if r.apply(1, d, added) {
		t.Fatal("an older add undid a newer eviction")
	}
	if r.apply(1, d, evicted) {
		t.Fatal("a duplicate was news")
	}
	if inv := r.inventory(); len(inv.Disk) != 0 || inv.Version != 6 {
		t.Fatalf("after add and evict out of order: %+v", inv)
	}
	// A newer epoch (the member restarted) starts over.
	if !r.apply(2, d, entry{ver: 1, tiers: maskRAM}) || len(r.inventory().RAM) != 1 {
		t.Fatal("a restarted member's first change was refused")
	}
	if r.apply(1, d, entry{ver: 7}) {
		t.Fatal("a change from the member's previous run was applied")
	}
}

func TestRecordMerge(t *testing.T) {
	t.Parallel()
	a, b, c := sum{1}, sum{2}, sum{3}
	r := newRecord(1)
	r.apply(1, a, entry{ver: 1, tiers: maskDisk})
	r.apply(1, b, entry{ver: 2, tiers: maskDisk})
	r.apply(1, c, entry{ver: 9, tiers: maskRAM}) // newer than the snapshot

	// Complete through 5: a was evicted by then (it is missing), b is still
	// there, and a tombstone newer than base says c... is older than ours.
	r.merge(snapshot{node: "x", epoch: 1, base: 5, ents: map[sum]entry{
		b: {ver: 2, tiers: maskDisk},
		c: {ver: 8},
	}})
	inv := r.inventory()
	want := []proto.Digest{b.digest()}
	if !slices.Equal(inv.Disk, want) || len(inv.RAM) != 1 || inv.Version != 9 {
		t.Fatalf("after merge: %+v", inv)
	}
	// An older snapshot changes nothing it has no newer news for.
	r.merge(snapshot{node: "x", epoch: 1, base: 3, ents: map[sum]entry{a: {ver: 1, tiers: maskDisk}}})
	if inv := r.inventory(); len(inv.Disk) != 1 {
		t.Fatalf("an old snapshot resurrected an evicted blob: %+v", inv)
	}
	// A change at or below base is old news.
	if r.apply(1, a, entry{ver: 4, tiers: maskDisk}) {
		t.Fatal("a change covered by the snapshot was applied")
	}
}

func TestWireRoundTrip(t *testing.T) {
	t.Parallel()
	e := entry{ver: 300, tiers: maskRAM | maskDisk}
	e.chunks, _ = bitmapAdd(nil, []int{0, 9, 1000})
	node, epoch, d, got, err := decodeDigestMsg(encodeDigestMsg("n1", 77, sum{5}, e))
	if err != nil || node != "n1" || epoch != 77 || d != (sum{5}) || got.ver != 300 || !sameEntry(got, e) {
		t.Fatalf("digest message round trip: %v %q %d %v %+v", err, node, epoch, d, got)
	}
	if idx := bitmapIndexes(got.chunks); !slices.Equal(idx, []int{0, 9, 1000}) {
		t.Fatalf("chunks: %v", idx)
	}
	snaps, err := decodeInventories(encodeInventories([]snapshot{
		{node: "a", epoch: 1, base: 2, ents: map[sum]entry{{1}: e}},
		{node: "b", epoch: 3, base: 4, ents: map[sum]entry{}},
	}))
	if err != nil || len(snaps) != 2 || snaps[1].node != "b" || !sameEntry(snaps[0].ents[sum{1}], e) {
		t.Fatalf("inventories round trip: %v %+v", err, snaps)
	}
}

func FuzzDecodeMessages(f *testing.F) {
	f.Add(encodeDigestMsg("n1", 1, sum{1}, entry{ver: 1, tiers: maskDisk, chunks: []byte{3}}))
	f.Add(encodeInventories([]snapshot{{node: "a", epoch: 1, base: 1, ents: map[sum]entry{{1}: {ver: 1, tiers: maskRAM}}}}))
	f.Add(encodeLeaveMsg("n1", 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 {
			return
		}
		// Must not panic, whatever the bytes.
		_, _, _, _, _ = decodeDigestMsg(b)
		_, _ = decodeInventories(b)
		_, _, _ = decodeLeaveMsg(b)
	})
}
