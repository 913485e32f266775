package coordinator

import (
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

func blob(name string, tier proto.Tier) proto.CachedBlob {
	return proto.CachedBlob{Digest: testDigest(name), Size: int64(len(name)), Tier: tier}
}

func sortedBlobs(bs ...proto.CachedBlob) []proto.CachedBlob {
	return slices.SortedFunc(slices.Values(bs), compareBlobs)
}

// fixedHosts is a liveHosts whose clock stands still.
func fixedHosts() *liveHosts {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return newLiveHosts(func() time.Time { return now })
}

func applyInv(h *liveHosts, d *proto.InventoryDelta) (inventoryChange, proto.HeartbeatAck) {
	b := proto.Heartbeat{HostID: "h1", Inventory: d}
	if fe := b.Validate(); fe != nil {
		panic(fe)
	}
	return h.apply(&b)
}

func cacheOf(t *testing.T, h *liveHosts) []proto.CachedBlob {
	t.Helper()
	b, _, _ := h.get("h1", time.Minute)
	return b.Cache
}

func TestLiveHostsFullThenDeltas(t *testing.T) {
	h := fixedHosts()
	a, b, c := blob("a", proto.TierDisk), blob("b", proto.TierRAM), blob("c", proto.TierDisk)

	change, ack := applyInv(h, &proto.InventoryDelta{Version: 10, Added: []proto.CachedBlob{c, a, b}})
	if ack.InventoryVersion != 10 {
		t.Fatalf("full inventory acked %d, want 10", ack.InventoryVersion)
	}
	if want := sortedBlobs(a, b, c); !change.Changed || !change.Full || !slices.Equal(change.Blobs, want) {
		t.Fatalf("change of a first full inventory = %+v, want full %v", change, want)
	}
	if got, want := cacheOf(t, h), sortedBlobs(a, b, c); !slices.Equal(got, want) {
		t.Fatalf("cache = %v, want %v (sorted by digest)", got, want)
	}

	// A delta onto the held version: c goes, d comes, a moves to RAM.
	d := blob("d", proto.TierDisk)
	aRAM := blob("a", proto.TierRAM)
	change, ack = applyInv(h, &proto.InventoryDelta{Base: 10, Version: 11, Added: []proto.CachedBlob{d, aRAM}, Removed: []proto.Digest{c.Digest}})
	if ack.InventoryVersion != 11 {
		t.Fatalf("delta acked %d, want 11", ack.InventoryVersion)
	}
	if !change.Changed || change.Full || !slices.Equal(change.Added, sortedBlobs(aRAM, d)) || !slices.Equal(change.Removed, []proto.Digest{c.Digest}) {
		t.Fatalf("change = %+v, want added %v, removed %v", change, sortedBlobs(aRAM, d), c.Digest)
	}
	if got, want := cacheOf(t, h), sortedBlobs(aRAM, b, d); !slices.Equal(got, want) {
		t.Fatalf("cache after the delta = %v, want %v", got, want)
	}

	// A delta that names what is already so changes nothing but the version.
	change, ack = applyInv(h, &proto.InventoryDelta{Base: 11, Version: 12, Added: []proto.CachedBlob{b}, Removed: []proto.Digest{c.Digest}})
	if ack.InventoryVersion != 12 || change.Changed {
		t.Fatalf("no-op delta: ack %d, change %+v; want ack 12 and no change", ack.InventoryVersion, change)
	}
	if got, want := cacheOf(t, h), sortedBlobs(aRAM, b, d); !slices.Equal(got, want) {
		t.Fatalf("cache after a no-op delta = %v, want %v", got, want)
	}
}

func TestLiveHostsRefusesDeltasItCannotBuildOn(t *testing.T) {
	h := fixedHosts()
	a, b := blob("a", proto.TierDisk), blob("b", proto.TierDisk)

	// Nothing held yet (a new leader): a delta is not applied, ack 0.
	change, ack := applyInv(h, &proto.InventoryDelta{Base: 5, Version: 6, Added: []proto.CachedBlob{a}})
	if ack.InventoryVersion != 0 || change.Changed {
		t.Fatalf("delta with nothing held: ack %d, change %+v; want 0 and none", ack.InventoryVersion, change)
	}
	if got := cacheOf(t, h); got != nil {
		t.Fatalf("cache = %v after a refused delta, want none", got)
	}

	applyInv(h, &proto.InventoryDelta{Version: 20, Added: []proto.CachedBlob{a}})
	applyInv(h, &proto.InventoryDelta{Base: 20, Version: 21, Added: []proto.CachedBlob{b}})

	// A retried copy of the delta already applied (its base is gone).
	change, ack = applyInv(h, &proto.InventoryDelta{Base: 20, Version: 21, Added: []proto.CachedBlob{b}})
	if ack.InventoryVersion != 21 || change.Changed {
		t.Fatalf("duplicate delta: ack %d, change %+v; want the held 21 and no change", ack.InventoryVersion, change)
	}
	// A delta on a base the coordinator never had.
	change, ack = applyInv(h, &proto.InventoryDelta{Base: 30, Version: 31, Removed: []proto.Digest{a.Digest}})
	if ack.InventoryVersion != 21 || change.Changed {
		t.Fatalf("delta on an unknown base: ack %d, change %+v; want the held 21 and no change", ack.InventoryVersion, change)
	}
	// A late copy of the older full inventory does not undo the delta.
	change, ack = applyInv(h, &proto.InventoryDelta{Version: 20, Added: []proto.CachedBlob{a}})
	if ack.InventoryVersion != 21 || change.Changed {
		t.Fatalf("stale full inventory: ack %d, change %+v; want the held 21 and no change", ack.InventoryVersion, change)
	}
	if got, want := cacheOf(t, h), sortedBlobs(a, b); !slices.Equal(got, want) {
		t.Fatalf("cache = %v, want %v", got, want)
	}
	// A beat without an inventory changes nothing and names the version.
	change, ack = applyInv(h, nil)
	if ack.InventoryVersion != 21 || change.Changed {
		t.Fatalf("beat without inventory: ack %d, change %+v", ack.InventoryVersion, change)
	}
	// A newer full inventory replaces everything.
	change, ack = applyInv(h, &proto.InventoryDelta{Version: 40, Added: []proto.CachedBlob{b}})
	if ack.InventoryVersion != 40 || !change.Full || !slices.Equal(change.Blobs, []proto.CachedBlob{b}) {
		t.Fatalf("newer full inventory: ack %d, change %+v", ack.InventoryVersion, change)
	}
	if got := cacheOf(t, h); !slices.Equal(got, []proto.CachedBlob{b}) {
		t.Fatalf("cache = %v, want only %v", got, b)
	}
}

// The older agents' whole Cache list still replaces the inventory on every
// beat, and leaves it without a version.
func TestLiveHostsLegacyCacheList(t *testing.T) {
	h := fixedHosts()
	a, b := blob("a", proto.TierDisk), blob("b", proto.TierRAM)
	applyInv(h, &proto.InventoryDelta{Version: 7, Added: []proto.CachedBlob{a}})

	beat := proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{b, a}}
	change, ack := h.apply(&beat)
	if ack.InventoryVersion != 0 || !change.Full || !slices.Equal(change.Blobs, sortedBlobs(a, b)) {
		t.Fatalf("Cache list: ack %d, change %+v; want ack 0 and the full list", ack.InventoryVersion, change)
	}
	first := cacheOf(t, h)
	beat = proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{a, b}}
	if change, _ := h.apply(&beat); change.Changed {
		t.Fatalf("the same list again reported a change: %+v", change)
	}
	if again := cacheOf(t, h); &again[0] != &first[0] {
		t.Fatal("the view's list was rebuilt though the inventory did not change")
	}
	// A delta cannot build on an unversioned inventory.
	if _, ack := applyInv(h, &proto.InventoryDelta{Base: 7, Version: 8, Removed: []proto.Digest{a.Digest}}); ack.InventoryVersion != 0 {
		t.Fatalf("delta onto a Cache list acked %d, want 0", ack.InventoryVersion)
	}
	beat = proto.Heartbeat{HostID: "h1", Cache: []proto.CachedBlob{}}
	if change, _ := h.apply(&beat); !change.Changed || len(change.Blobs) != 0 || len(cacheOf(t, h)) != 0 {
		t.Fatalf("an empty Cache list did not empty the inventory: %+v", change)
	}
}

// The view's list is the same slice from beat to beat until the inventory
// changes, and a change never alters a list already handed out.
func TestLiveHostsViewListIsStable(t *testing.T) {
	h := fixedHosts()
	a, b := blob("a", proto.TierDisk), blob("b", proto.TierDisk)
	applyInv(h, &proto.InventoryDelta{Version: 1, Added: []proto.CachedBlob{a, b}})
	before := cacheOf(t, h)
	for range 3 {
		applyInv(h, nil)
	}
	if again := cacheOf(t, h); &again[0] != &before[0] {
		t.Fatal("beats without a change rebuilt the list")
	}
	applyInv(h, &proto.InventoryDelta{Base: 1, Version: 2, Added: []proto.CachedBlob{blob("a", proto.TierRAM)}})
	if !slices.Equal(before, sortedBlobs(a, b)) {
		t.Fatalf("a delta changed a list already handed out: %v", before)
	}
	if got, want := cacheOf(t, h), sortedBlobs(blob("a", proto.TierRAM), b); !slices.Equal(got, want) {
		t.Fatalf("cache after the tier change = %v, want %v", got, want)
	}
}

func TestHeartbeatValidate(t *testing.T) {
	good := testDigest("a")
	many := make([]proto.Digest, proto.MaxInventoryChange+1)
	for i := range many {
		many[i] = good
	}
	for _, tc := range []struct {
		name  string
		beat  proto.Heartbeat
		field string
	}{
		{"both cache and inventory", proto.Heartbeat{Cache: []proto.CachedBlob{}, Inventory: &proto.InventoryDelta{Version: 1}}, "inventory"},
		{"version not above base", proto.Heartbeat{Inventory: &proto.InventoryDelta{Base: 3, Version: 3}}, "inventory.version"},
		{"version 0", proto.Heartbeat{Inventory: &proto.InventoryDelta{}}, "inventory.version"},
		{"too many entries", proto.Heartbeat{Inventory: &proto.InventoryDelta{Base: 1, Version: 2, Removed: many}}, "inventory"},
		{"bad digest", proto.Heartbeat{Inventory: &proto.InventoryDelta{Version: 1, Added: []proto.CachedBlob{{Digest: "sha256:nope", Tier: proto.TierDisk}}}}, "inventory.added"},
		{"bad removed digest", proto.Heartbeat{Inventory: &proto.InventoryDelta{Base: 1, Version: 2, Removed: []proto.Digest{"x"}}}, "inventory.removed"},
		{"vram tier", proto.Heartbeat{Inventory: &proto.InventoryDelta{Version: 1, Added: []proto.CachedBlob{{Digest: good, Tier: proto.TierVRAM}}}}, "inventory.added"},
		{"negative size", proto.Heartbeat{Inventory: &proto.InventoryDelta{Version: 1, Added: []proto.CachedBlob{{Digest: good, Tier: proto.TierDisk, Size: -1}}}}, "inventory.added"},
		{"digest twice", proto.Heartbeat{Inventory: &proto.InventoryDelta{Base: 1, Version: 2, Added: []proto.CachedBlob{{Digest: good, Tier: proto.TierDisk}}, Removed: []proto.Digest{good}}}, "inventory.removed"},
		{"full inventory removing", proto.Heartbeat{Inventory: &proto.InventoryDelta{Version: 2, Removed: []proto.Digest{good}}}, "inventory.removed"},
	} {
		fe := tc.beat.Validate()
		if fe == nil || fe.Field != tc.field {
			t.Errorf("%s: Validate() = %v, want an error on field %q", tc.name, fe, tc.field)
		}
	}
	ok := proto.Heartbeat{Inventory: &proto.InventoryDelta{Base: 1, Version: 2, Added: []proto.CachedBlob{{Digest: good, Tier: proto.TierRAM, Size: 5}}, Removed: []proto.Digest{testDigest("b")}}}
	if fe := ok.Validate(); fe != nil {
		t.Errorf("a good delta was refused: %v", fe)
	}
}
