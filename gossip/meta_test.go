package gossip

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
)

func TestMetaRoundTrip(t *testing.T) {
	t.Parallel()
	m := NodeMeta{Role: RoleCoordinator, APIAddr: "10.0.0.1:7700", BlobAddr: "10.0.0.1:7710",
		Labels: map[string]string{"zone": "eu-1", "rack": "r12"}, InventoryVersion: 42}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Role != m.Role || got.APIAddr != m.APIAddr || got.BlobAddr != m.BlobAddr ||
		got.InventoryVersion != m.InventoryVersion || !maps.Equal(got.Labels, m.Labels) {
		t.Fatalf("round trip: got %+v, want %+v", got, m)
	}
}

func TestMetaSizeLimit(t *testing.T) {
	t.Parallel()
	// Grow one label until the meta is exactly at the limit, with the
	// widest inventory version.
	m := NodeMeta{Role: RoleAgent, APIAddr: "[2001:db8::1]:7700", BlobAddr: "[2001:db8::1]:7710",
		Labels: map[string]string{"zone": "z", "rack": ""}, InventoryVersion: ^uint64(0)}
	for len(m.encode()) < memberlist.MetaMaxSize {
		m.Labels["rack"] += "r"
	}
	if n := len(m.encode()); n != memberlist.MetaMaxSize {
		t.Fatalf("could not build a meta of exactly %d bytes (got %d)", memberlist.MetaMaxSize, n)
	}
	b, err := m.Encode()
	if err != nil {
		t.Fatalf("a meta of exactly %d bytes was refused: %v", memberlist.MetaMaxSize, err)
	}
	if got, err := DecodeNodeMeta(b); err != nil || got.Labels["rack"] != m.Labels["rack"] {
		t.Fatalf("maximal meta did not round trip: %v", err)
	}

	cfg := DefaultConfig()
	cfg.APIAddr, cfg.BlobAddr, cfg.Labels = m.APIAddr, m.BlobAddr, maps.Clone(m.Labels)
	if err := ValidateConfig(cfg); err != nil {
		t.Fatalf("config with the maximal meta: %v", err)
	}

	m.Labels["rack"] += "r"
	if _, err := m.Encode(); !errors.Is(err, ErrMetaTooLarge) || !strings.Contains(err.Error(), "513 bytes") {
		t.Fatalf("a %d-byte meta: got %v, want ErrMetaTooLarge saying 513 bytes", len(m.encode()), err)
	}
	cfg.Labels["rack"] += "r"
	if err := ValidateConfig(cfg); !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("config with a meta one byte too big: got %v, want ErrMetaTooLarge", err)
	}
}

func TestDecodeMetaRefusesGarbage(t *testing.T) {
	t.Parallel()
	good, _ := NodeMeta{Role: RoleAgent, Labels: map[string]string{"a": "b"}}.Encode()
	for _, b := range [][]byte{nil, {}, {9, 1}, good[:len(good)-1], {metaV1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}} {
		if _, err := DecodeNodeMeta(b); err == nil {
			t.Errorf("DecodeNodeMeta(%x) accepted garbage", b)
		}
	}
}

func FuzzDecodeNodeMeta(f *testing.F) {
	good, _ := NodeMeta{Role: RoleAgent, APIAddr: "a", Labels: map[string]string{"k": "v"}}.Encode()
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeNodeMeta(b)
		if err != nil {
			return
		}
		if _, err := m.Encode(); err != nil && len(b) <= memberlist.MetaMaxSize {
			t.Fatalf("decoded meta does not encode: %v", err)
		}
	})
}
