package agent

import (
	"cmp"
	"crypto/sha256"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

func cached(name string, tier proto.Tier) proto.CachedBlob {
	sum := sha256.Sum256([]byte(name))
	return proto.CachedBlob{Digest: proto.DigestFromSum(sum[:]), Size: 1, Tier: tier}
}

// beatWith runs prepare on a beat whose whole inventory is inv.
func beatWith(s *inventorySync, now time.Time, inv ...proto.CachedBlob) (proto.Heartbeat, bool) {
	b := proto.Heartbeat{Cache: slices.Clone(inv)}
	if b.Cache == nil {
		b.Cache = []proto.CachedBlob{}
	}
	whole := s.prepare(&b, now)
	return b, whole
}

func TestInventorySyncSendsChangesAgainstTheAcknowledgedVersion(t *testing.T) {
	now := time.Now()
	s := newInventorySync(now)
	a, b, c := cached("a", proto.TierDisk), cached("b", proto.TierDisk), cached("c", proto.TierDisk)

	first, whole := beatWith(s, now, a, b)
	if !whole || first.Cache != nil || first.Inventory == nil || !first.Inventory.Full() || len(first.Inventory.Added) != 2 {
		t.Fatalf("first beat = %+v (whole %v); want the whole inventory as a delta on 0", first, whole)
	}
	v1 := first.Inventory.Version
	if v1 < uint64(now.UnixMicro()) {
		t.Fatalf("first version %d is below the clock's %d", v1, now.UnixMicro())
	}
	if s.ack(v1) {
		t.Fatal("acknowledging the version sent asked for a whole inventory")
	}
	if same, whole := beatWith(s, now, b, a); same.Inventory != nil || same.Cache != nil || whole {
		t.Fatalf("beat without change = %+v; want no inventory", same)
	}

	// a moves to RAM, b goes, c comes.
	aRAM := cached("a", proto.TierRAM)
	d1, _ := beatWith(s, now, aRAM, c)
	inv := d1.Inventory
	wantAdded := slices.SortedFunc(slices.Values([]proto.CachedBlob{aRAM, c}), func(x, y proto.CachedBlob) int { return cmp.Compare(x.Digest, y.Digest) })
	if inv == nil || inv.Base != v1 || inv.Version <= v1 || !slices.Equal(inv.Added, wantAdded) || !slices.Equal(inv.Removed, []proto.Digest{b.Digest}) {
		t.Fatalf("delta = %+v; want on %d, adding %v, removing b", inv, v1, wantAdded)
	}
	// Its answer is lost (a timeout); the next change is built on v1 again
	// and the coordinator, which did apply d1, answers with d1's version:
	// the agent adopts it instead of starting over.
	d2, _ := beatWith(s, now, aRAM)
	if d2.Inventory == nil || d2.Inventory.Base != v1 {
		t.Fatalf("delta after a lost answer = %+v; want one on %d", d2.Inventory, v1)
	}
	if s.ack(inv.Version) {
		t.Fatal("an answer naming an earlier version this agent sent asked for a whole inventory")
	}
	d3, _ := beatWith(s, now, aRAM)
	if d3.Inventory == nil || d3.Inventory.Base != inv.Version || !slices.Equal(d3.Inventory.Removed, []proto.Digest{c.Digest}) || len(d3.Inventory.Added) != 0 {
		t.Fatalf("delta after adopting %d = %+v; want one removing c", inv.Version, d3.Inventory)
	}

	// A coordinator holding nothing (a new leader): the whole inventory next.
	if !s.ack(0) {
		t.Fatal("an answer of 0 did not ask for the whole inventory")
	}
	full, whole := beatWith(s, now, aRAM)
	if !whole || !full.Inventory.Full() || full.Inventory.Version <= d3.Inventory.Version || !slices.Equal(full.Inventory.Added, []proto.CachedBlob{aRAM}) {
		t.Fatalf("beat after ack 0 = %+v; want the whole inventory, numbered above %d", full.Inventory, d3.Inventory.Version)
	}
	// A version this agent never sent (a predecessor's, from a clock that
	// ran ahead): the whole inventory, numbered above it.
	if !s.ack(full.Inventory.Version + 1_000_000) {
		t.Fatal("an unknown version did not ask for the whole inventory")
	}
	again, _ := beatWith(s, now, aRAM)
	if !again.Inventory.Full() || again.Inventory.Version <= full.Inventory.Version+1_000_000 {
		t.Fatalf("beat after an unknown version = %+v", again.Inventory)
	}
}

// A restarted agent numbers its versions above its predecessor's.
func TestInventorySyncVersionsGrowAcrossRestarts(t *testing.T) {
	now := time.Now()
	old := newInventorySync(now)
	var last uint64
	for range 1000 {
		b, _ := beatWith(old, now, cached("x", proto.TierDisk))
		last = b.Inventory.Version
		old.reset()
	}
	b, _ := beatWith(newInventorySync(now.Add(time.Second)), now, cached("x", proto.TierDisk))
	if b.Inventory.Version <= last {
		t.Fatalf("restarted agent's first version %d is not above its predecessor's %d", b.Inventory.Version, last)
	}
}

// A coordinator that does not know the inventory field gets whole Cache
// lists for a while, then the exchange is tried again.
func TestInventorySyncFallsBackForOlderCoordinators(t *testing.T) {
	now := time.Now()
	s := newInventorySync(now)
	a := cached("a", proto.TierDisk)
	_, whole := beatWith(s, now, a)
	unknown := &client.Error{Status: http.StatusBadRequest, Code: "unknown_field", Field: "inventory"}
	if !s.refused(unknown, whole, now) {
		t.Fatal("a coordinator refusing the field did not call for a resend")
	}
	b, whole := beatWith(s, now, a)
	if !whole || b.Inventory != nil || !slices.Equal(b.Cache, []proto.CachedBlob{a}) {
		t.Fatalf("beat to an older coordinator = %+v; want the whole Cache list", b)
	}
	if s.refused(&client.Error{Status: http.StatusServiceUnavailable, Code: "not_leader"}, whole, now) {
		t.Fatal("an error unrelated to the inventory called for a resend")
	}
	later, _ := beatWith(s, now.Add(legacyRetry+time.Second), a)
	if later.Inventory == nil || !later.Inventory.Full() || later.Cache != nil {
		t.Fatalf("beat after the retry period = %+v; want the exchange again, from a whole inventory", later)
	}
}
