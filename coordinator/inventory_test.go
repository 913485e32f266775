package coordinator

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

func hostCache(t *testing.T, api *client.Client, id string) []proto.CachedBlob {
	t.Helper()
	hosts, err := api.Hosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.ID == id {
			return h.Cache
		}
	}
	t.Fatalf("host %s not listed", id)
	return nil
}

func beatInventory(t *testing.T, api *client.Client, d *proto.InventoryDelta) proto.HeartbeatAck {
	t.Helper()
	ack, err := api.Heartbeat(context.Background(), proto.Heartbeat{HostID: "h1", Time: time.Now(), Inventory: d})
	if err != nil {
		t.Fatalf("heartbeat with inventory %+v: %v", d, err)
	}
	return ack
}

// A delta heartbeat changes what GET /v1/hosts shows; a delta on a base the
// coordinator does not hold changes nothing and the answer says what it
// holds; an old-style Cache list still replaces the lot.
func TestHeartbeatInventoryDeltasReachTheHostView(t *testing.T) {
	_, api := newTestServer(t, nil)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	a, b, c := blob("a", proto.TierDisk), blob("b", proto.TierDisk), blob("c", proto.TierRAM)

	if ack := beatInventory(t, api, &proto.InventoryDelta{Version: 100, Added: []proto.CachedBlob{a, b}}); ack.InventoryVersion != 100 || ack.Index == 0 {
		t.Fatalf("ack of a full inventory = %+v, want version 100 and the Raft index", ack)
	}
	if got, want := hostCache(t, api, "h1"), sortedBlobs(a, b); !slices.Equal(got, want) {
		t.Fatalf("cache after the full inventory = %v, want %v", got, want)
	}
	// A beat without an inventory leaves it as it is.
	if ack := beatInventory(t, api, nil); ack.InventoryVersion != 100 {
		t.Fatalf("ack of a beat without inventory = %+v, want version 100", ack)
	}
	bRAM := blob("b", proto.TierRAM)
	if ack := beatInventory(t, api, &proto.InventoryDelta{Base: 100, Version: 101, Added: []proto.CachedBlob{c, bRAM}, Removed: []proto.Digest{a.Digest}}); ack.InventoryVersion != 101 {
		t.Fatalf("ack of a delta = %+v, want version 101", ack)
	}
	if got, want := hostCache(t, api, "h1"), sortedBlobs(bRAM, c); !slices.Equal(got, want) {
		t.Fatalf("cache after the delta = %v, want %v", got, want)
	}
	if ack := beatInventory(t, api, &proto.InventoryDelta{Base: 99, Version: 102, Removed: []proto.Digest{c.Digest}}); ack.InventoryVersion != 101 {
		t.Fatalf("ack of a delta on a stale base = %+v, want the held version 101", ack)
	}
	if got, want := hostCache(t, api, "h1"), sortedBlobs(bRAM, c); !slices.Equal(got, want) {
		t.Fatalf("cache after a refused delta = %v, want it unchanged, %v", got, want)
	}
	// The older protocol: a whole list, no version.
	ack, err := api.Heartbeat(context.Background(), proto.Heartbeat{HostID: "h1", Time: time.Now(), Cache: []proto.CachedBlob{a}})
	if err != nil || ack.InventoryVersion != 0 {
		t.Fatalf("ack of a Cache list = %+v, %v; want version 0", ack, err)
	}
	if got := hostCache(t, api, "h1"); !slices.Equal(got, []proto.CachedBlob{a}) {
		t.Fatalf("cache after a Cache list = %v, want %v", got, a)
	}
}

// A malformed inventory is a 400 in the API's error shape, naming the field.
func TestHeartbeatInventoryRefusedWhenMalformed(t *testing.T) {
	s, api := newTestServer(t, nil)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	d := string(testDigest("a"))
	beat := func(inv string) []byte {
		return []byte(`{"proto":1,"host_id":"h1","time":"2026-01-02T03:04:05Z","slots":[],` + inv + `}`)
	}
	for _, tc := range []struct {
		name, body, field string
	}{
		{"cache and inventory", `"cache":[],"inventory":{"base":0,"version":1}`, "inventory"},
		{"version not above base", `"inventory":{"base":4,"version":4}`, "inventory.version"},
		{"bad digest", `"inventory":{"base":0,"version":1,"added":[{"digest":"sha256:xyz","size":1,"tier":"disk"}]}`, "inventory.added"},
		{"vram tier", `"inventory":{"base":0,"version":1,"added":[{"digest":"` + d + `","size":1,"tier":"vram"}]}`, "inventory.added"},
		{"digest twice", `"inventory":{"base":1,"version":2,"added":[{"digest":"` + d + `","size":1,"tier":"disk"}],"removed":["` + d + `"]}`, "inventory.removed"},
		{"too many entries", `"inventory":{"base":1,"version":2,"removed":["` + strings.Repeat(d+`","`, proto.MaxInventoryChange) + d + `"]}`, "inventory"},
	} {
		r := rawCall(t, http.MethodPost, s.URL()+"/v1/agent/heartbeat", beat(tc.body))
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: status %d (%s), want 400", tc.name, r.status, r.body)
			continue
		}
		if e := decodeErrorBody(t, r); e.Code != "invalid_field" || e.Field != tc.field {
			t.Errorf("%s: error %+v, want invalid_field on %q", tc.name, e, tc.field)
		}
	}
	// The answer to a good beat is an object with the index and version.
	r := rawCall(t, http.MethodPost, s.URL()+"/v1/agent/heartbeat", beat(`"inventory":{"base":0,"version":5}`))
	var ack map[string]uint64
	if err := json.Unmarshal(r.body, &ack); r.status != http.StatusOK || err != nil || ack["index"] == 0 || ack["inventory_version"] != 5 {
		t.Fatalf("answer %d %s (%v); want 200 with index and inventory_version 5", r.status, r.body, err)
	}
}
