package gpu

import (
	"errors"
	"reflect"
	"testing"
)

func TestSimulatedInventory(t *testing.T) {
	cfg := []SimGPU{
		{Name: "Simulated H200", MemoryBytes: 141 << 30},
		{MemoryBytes: 24 << 30},
	}
	d := NewSimulated(cfg)
	cfg[0].Name = "changed after construction"

	if got := d.Kind(); got != KindSimulated {
		t.Fatalf("Kind() = %q, want %q", got, KindSimulated)
	}
	want := []Device{
		{Index: 0, UUID: "GPU-sim-0", Name: "Simulated H200", MemoryTotal: 141 << 30, MemoryFree: 141 << 30},
		{Index: 1, UUID: "GPU-sim-1", Name: "Simulated GPU", MemoryTotal: 24 << 30, MemoryFree: 24 << 30},
	}
	for round := 0; round < 2; round++ { // every reading is the same
		got, err := d.Devices()
		if err != nil {
			t.Fatalf("Devices(): %v", err)
		}
		if len(got) != len(want) {
			t.Fatalf("Devices() = %d devices, want %d", len(got), len(want))
		}
		for i := range want {
			if !reflect.DeepEqual(got[i], want[i]) {
				t.Errorf("round %d device %d = %+v, want %+v", round, i, got[i], want[i])
			}
		}
		got[0].Name = "caller's copy"
	}

	if err := d.Close(); err != nil {
		t.Fatalf("Close(): %v", err)
	}
	if _, err := d.Devices(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Devices() after Close = %v, want ErrClosed", err)
	}
}

func TestSimulatedEmpty(t *testing.T) {
	got, err := NewSimulated(nil).Devices()
	if err != nil || len(got) != 0 {
		t.Fatalf("NewSimulated(nil).Devices() = %v, %v; want no devices", got, err)
	}
}

func TestDeviceToProto(t *testing.T) {
	d := Device{Index: 2, UUID: "GPU-sim-2", Name: "Simulated H200", MemoryTotal: 141 << 30, MemoryUsed: 1 << 30}
	g := d.ToProto(5<<30, 8<<30)
	if g.Index != 2 || g.UUID != "GPU-sim-2" || g.Name != "Simulated H200" ||
		g.MemoryTotal != 141<<30 || g.MemoryReserved != 5<<30 || g.SlotBytes != 8<<30 {
		t.Fatalf("ToProto copied fields wrong: %+v", g)
	}
	if g.Slots != 17 { // (141-5)/8 = 17
		t.Fatalf("ToProto Slots = %d, want 17", g.Slots)
	}
	pool, err := NewSlotPool(d.Index, d.MemoryTotal, 5<<30, 8<<30)
	if err != nil {
		t.Fatal(err)
	}
	if pool.Slots() != g.Slots {
		t.Fatalf("pool has %d slots, ToProto says %d", pool.Slots(), g.Slots)
	}

	for _, tc := range []struct {
		name             string
		reserve, slotLen uint64
	}{
		{"zero slot size", 0, 0},
		{"reserve eats all", 141 << 30, 1 << 30},
		{"slot larger than usable", 1 << 30, 200 << 30},
	} {
		if g := d.ToProto(tc.reserve, tc.slotLen); g.Slots != 0 {
			t.Errorf("%s: Slots = %d, want 0", tc.name, g.Slots)
		}
	}
}
