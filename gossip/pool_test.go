package gossip

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

func TestJoinSeesMeta(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var events []Event
	cfg := testConfig(t, "n0")
	cfg.Role = RoleCoordinator
	cfg.Events = func(ev Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}
	a := startPool(t, cfg)
	cfg = testConfig(t, "n1")
	cfg.Join = []string{a.LocalNode().Addr}
	b := startPool(t, cfg)

	eventually(t, "n1 sees n0's meta", func() bool {
		m, ok := member(b, "n0")
		return ok && m.State == StateAlive && m.Role == RoleCoordinator
	})
	m, _ := member(b, "n0")
	if m.APIAddr != "127.0.0.1:7710" || m.BlobAddr != "127.0.0.1:7712" || m.Labels["rack"] != "n0" || m.Labels["zone"] != "z1" {
		t.Fatalf("n0 as n1 sees it: %+v", m)
	}
	if m.Addr != a.LocalNode().Addr {
		t.Fatalf("n0's address: n1 sees %q, n0 says %q", m.Addr, a.LocalNode().Addr)
	}
	eventually(t, "n0 gets a join event for n1", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(events, func(ev Event) bool {
			return ev.Type == EventJoin && ev.Member.Name == "n1" && ev.Member.Role == RoleAgent
		})
	})

	if err := b.UpdateMeta(NodeMeta{APIAddr: "127.0.0.1:9000", Labels: map[string]string{"zone": "z2"}}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n0 sees n1's new meta", func() bool {
		m, ok := member(a, "n1")
		return ok && m.APIAddr == "127.0.0.1:9000" && m.Labels["zone"] == "z2" && m.BlobAddr == "" && m.Role == RoleAgent
	})
	if err := b.UpdateMeta(NodeMeta{Labels: map[string]string{"x": strings.Repeat("y", 600)}}, time.Second); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("oversized UpdateMeta: got %v, want ErrMetaTooLarge", err)
	}
}

func TestInventorySpreads(t *testing.T) {
	t.Parallel()
	pools := startCluster(t, 3)
	a, b, c := pools[0], pools[1], pools[2]
	d1, d2 := digest("one"), digest("two")

	if err := a.Added(d1, proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	if err := c.Added(d1, proto.TierRAM); err != nil {
		t.Fatal(err)
	}
	if err := b.ChunksHave(d2, []int{0, 3}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 sees n2 (ram) and n0 (disk) hold d1", func() bool {
		return holderNames(b.Holders(d1)) == "n2:ram[],n0:disk[]"
	})
	eventually(t, "n0 sees n1's chunks of d2", func() bool {
		return holderNames(a.Holders(d2)) == "n1:[0 3]" && holderNames(c.Holders(d2)) == "n1:[0 3]"
	})
	eventually(t, "n0 sees n2 hold d1, and not itself", func() bool { return holderNames(a.Holders(d1)) == "n2:ram[]" })

	// Complete the download, then evict it again.
	if err := b.Added(d2, proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n2 sees d2 whole on n1", func() bool { return holderNames(c.Holders(d2)) == "n1:disk[]" })
	if err := b.Evicted(d2, proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n2 sees d2 gone from n1", func() bool { return len(c.Holders(d2)) == 0 })

	// SetInventory replaces the whole of n2's inventory.
	full := Inventory{RAM: []proto.Digest{d2}, Disk: []proto.Digest{d2}, Chunks: map[proto.Digest][]int{digest("three"): {7}}}
	if err := c.SetInventory(full); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n0 sees n2's new inventory", func() bool {
		inv, ok := a.Inventory("n2")
		return ok && len(inv.RAM) == 1 && len(inv.Disk) == 1 && len(inv.Chunks) == 1 && len(a.Holders(d1)) == 0
	})
	eventually(t, "n0 sees n2's inventory version in its meta", func() bool {
		m, _ := member(a, "n2")
		inv, _ := c.Inventory("n2")
		return m.InventoryVersion == inv.Version && inv.Version > 0
	})

	// A member that joins later learns the lot through push/pull.
	cfg := testConfig(t, "n3")
	cfg.Join = []string{b.LocalNode().Addr}
	late := startPool(t, cfg)
	eventually(t, "the late member sees n0's d1 and n2's d2", func() bool {
		return holderNames(late.Holders(d1)) == "n0:disk[]" && holderNames(late.Holders(d2)) == "n2:ram[]"
	})

	if err := a.Added("sha256:nope", proto.TierDisk); err == nil {
		t.Fatal("Added accepted a malformed digest")
	}
	if err := a.Added(d1, proto.TierPeer); err == nil {
		t.Fatal("Added accepted tier peer")
	}
	if err := a.ChunksHave(d1, []int{MaxChunks}); err == nil {
		t.Fatal("ChunksHave accepted an index past MaxChunks")
	}
}

func TestClosedMemberIsDeadAndDropped(t *testing.T) {
	t.Parallel()
	pools := startCluster(t, 3)
	a, c := pools[0], pools[2]
	d := digest("dead")
	if err := c.Added(d, proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n0 sees n2 hold d", func() bool { return len(a.Holders(d)) == 1 })

	if err := c.Close(); err != nil { // no Leave: a crash, as peers see it
		t.Fatal(err)
	}
	eventually(t, "n0 marks n2 dead", func() bool {
		m, ok := member(a, "n2")
		return ok && m.State == StateDead
	})
	if hs := a.Holders(d); len(hs) != 0 {
		t.Fatalf("a dead member still holds d: %s", holderNames(hs))
	}
	if _, ok := a.Inventory("n2"); ok {
		t.Fatal("n0 kept the dead member's inventory")
	}
	if err := c.Added(d, proto.TierRAM); err != nil {
		t.Fatalf("Added after Close: %v", err) // local bookkeeping still works
	}
}

func TestLeave(t *testing.T) {
	t.Parallel()
	pools := startCluster(t, 3)
	a, c := pools[0], pools[2]
	if err := c.Added(digest("x"), proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n0 sees n2's inventory", func() bool { _, ok := a.Inventory("n2"); return ok })
	if err := c.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n0 marks n2 left", func() bool {
		m, ok := member(a, "n2")
		return ok && m.State == StateLeft
	})
	if _, ok := a.Inventory("n2"); ok {
		t.Fatal("n0 kept the inventory of a member that left")
	}
	if m := c.LocalNode(); m.State != StateLeft {
		t.Fatalf("n2 sees itself %v after Leave", m.State)
	}
	if err := c.UpdateMeta(NodeMeta{}, time.Second); err == nil {
		t.Fatal("UpdateMeta after Leave succeeded; it would bring the member back")
	}
}

func TestWrongKeyRefused(t *testing.T) {
	t.Parallel()
	a := startPool(t, testConfig(t, "n0"))
	cfg := testConfig(t, "intruder")
	log, buf := testLogger(t)
	cfg.Logger = log
	cfg.SecretKeys = [][]byte{[]byte("another key, 32 bytes long......")}
	cfg.Join = []string{a.LocalNode().Addr}
	p, err := New(cfg)
	if err == nil {
		p.Close()
		t.Fatal("a member with another key joined")
	}
	if !errors.Is(err, ErrWrongKey) {
		t.Fatalf("error does not point at the key: %v", err)
	}
	if !strings.Contains(buf.String(), "gossip key (SecretKeys) is probably wrong") {
		t.Fatalf("log does not point at the key:\n%s", buf.String())
	}
	if n := countAlive(a); n != 1 {
		t.Fatalf("n0 sees %d members, want only itself", n)
	}
}

func TestOtherLabelRefused(t *testing.T) {
	t.Parallel()
	a := startPool(t, testConfig(t, "n0"))
	cfg := testConfig(t, "stranger")
	cfg.Label = "another-cluster"
	cfg.JoinTimeout = 500 * time.Millisecond
	cfg.Join = []string{a.LocalNode().Addr}
	p, err := New(cfg)
	if err == nil {
		p.Close()
		t.Fatal("a member with another label joined")
	}
	if !errors.Is(err, ErrNoSeed) || !strings.Contains(err.Error(), "Label") {
		t.Fatalf("error does not point at the label: %v", err)
	}
	if n := countAlive(a); n != 1 {
		t.Fatalf("n0 sees %d members, want only itself", n)
	}
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	pools := startCluster(t, 2)
	newKey := []byte("the next key, 16")
	for _, step := range []func(*Pool) error{
		func(p *Pool) error { return p.InstallKey(newKey) },
		func(p *Pool) error { return p.UseKey(newKey) },
		func(p *Pool) error { return p.RemoveKey(testKey) },
	} {
		for _, p := range pools {
			if err := step(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	d := digest("rotated")
	if err := pools[0].Added(d, proto.TierDisk); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n1 sees n0's change under the new key", func() bool { return len(pools[1].Holders(d)) == 1 })

	cfg := testConfig(t, "n2")
	cfg.SecretKeys = [][]byte{newKey}
	cfg.Join = []string{pools[1].LocalNode().Addr}
	late := startPool(t, cfg)
	eventually(t, "a member with only the new key joins and sees d", func() bool {
		return countAlive(late) == 3 && len(late.Holders(d)) == 1
	})
	eventually(t, "n0, rotated, sees the new member", func() bool { return countAlive(pools[0]) == 3 })

	if err := pools[0].InstallKey([]byte("short")); err == nil {
		t.Fatal("InstallKey accepted a 5-byte key")
	}
	if err := pools[0].RemoveKey(newKey); err == nil {
		t.Fatal("RemoveKey removed the primary key")
	}
	cfg = testConfig(t, "plain")
	cfg.SecretKeys = nil
	plain := startPool(t, cfg)
	if err := plain.InstallKey(newKey); err == nil {
		t.Fatal("InstallKey turned encryption on in a running pool")
	}
}

func TestBadMessagesIgnored(t *testing.T) {
	t.Parallel()
	pools := startCluster(t, 2)
	d := &delegate{pools[0]}
	good := encodeDigestMsg("n1", 1, sum{1}, entry{ver: 1, tiers: maskDisk})
	for _, b := range [][]byte{nil, {0}, {99, 1, 2}, {msgDigest}, good[:len(good)-1], append(good, 0)} {
		d.NotifyMsg(b)
		d.MergeRemoteState(b, false)
	}
	d.MergeRemoteState([]byte{msgInventories, 0xff, 0xff, 0xff, 0xff, 0x0f}, true)
	if countAlive(pools[0]) != 2 {
		t.Fatal("bad messages disturbed membership")
	}
	// A message about itself, relayed back, is not taken for a peer's.
	d.NotifyMsg(encodeDigestMsg("n0", 1, sum{2}, entry{ver: 1, tiers: maskDisk}))
	if inv, _ := pools[0].Inventory("n0"); len(inv.Disk) != 0 {
		t.Fatalf("n0 took its own name from the wire: %+v", inv)
	}
}
