package hbbench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/proto"
)

// childEnv makes the test binary stand in for `hearth coordinator`: the
// benchmark starts its coordinator as a separate process from a command,
// and under go test there is no hearth binary to run. The stand-in takes
// the flags hbbench passes and runs the same coordinator.New.
const childEnv = "HBBENCH_TEST_COORDINATOR"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "coordinator" {
		os.Exit(standInCoordinator(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func standInCoordinator(args []string) int {
	cfg := coordinator.DefaultConfig()
	fs := flag.NewFlagSet("coordinator", flag.ContinueOnError)
	fs.StringVar(&cfg.DataDir, "data-dir", "", "")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "", "")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", "", "")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", false, "")
	fs.String("log-level", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg.RaftFastTimeouts, cfg.RaftLogLevel = true, "error"
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := coordinator.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	s.Close()
	return 0
}

// Both modes, 50 hosts for 2 s: every host beats, nothing fails, and the
// delta mode's beats carry inventories only when something changed.
func TestRunBothModes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two coordinator processes and runs each for several seconds")
	}
	t.Setenv(childEnv, "1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Hosts: 50, Interval: 500 * time.Millisecond, Duration: 2 * time.Second, Warmup: time.Second,
		ChangeRate: 0.2, Conns: 8, Registrars: 4,
		Command: []string{os.Args[0], "coordinator"},
		Logf:    t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 2 || res.Runs[0].Mode != ModeFull || res.Runs[1].Mode != ModeDelta {
		t.Fatalf("runs = %+v; want full, then delta", res.Runs)
	}
	for _, r := range res.Runs {
		t.Logf("%+v", r)
		if r.Beats == 0 || r.Errors != 0 || r.RequestBytes == 0 {
			t.Errorf("%s mode: %d beats, %d errors, %d bytes; want beats, bytes and no errors", r.Mode, r.Beats, r.Errors, r.RequestBytes)
		}
	}
	full, delta := res.Runs[0], res.Runs[1]
	if full.InventoryBeats != full.Beats {
		t.Errorf("full mode: %d of %d beats carried the inventory; want all", full.InventoryBeats, full.Beats)
	}
	if delta.InventoryBeats == 0 || delta.InventoryBeats >= delta.Beats {
		t.Errorf("delta mode: %d of %d beats carried an inventory change; want some (20%% of hosts change per interval), not all", delta.InventoryBeats, delta.Beats)
	}
	if delta.BeatBytes >= full.BeatBytes {
		t.Errorf("delta beats average %.0f bytes, full ones %.0f", delta.BeatBytes, full.BeatBytes)
	}
}

// The hand-written beats decode, strictly, into what they stand for, and
// the delta mode's inventories follow the exchange.
func TestBeatBodyDecodes(t *testing.T) {
	cfg := &Config{Hosts: 3}
	if err := cfg.fillDefaults(); err != nil {
		t.Fatal(err)
	}
	decode := func(body []byte) proto.Heartbeat {
		t.Helper()
		var b proto.Heartbeat
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil {
			t.Fatalf("beat %s does not decode: %v", body, err)
		}
		if _, err := dec.Token(); err != io.EOF {
			t.Fatalf("trailing data after the beat: %v", err)
		}
		if fe := b.Validate(); fe != nil {
			t.Fatalf("beat refused: %v", fe)
		}
		return b
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

	fl := newFleet(cfg, ModeFull)
	h := fl.hosts[1]
	b := decode(fl.buildBeat(1, now, nil).body)
	var want []proto.CachedBlob
	for _, e := range h.inv {
		want = append(want, fl.cat.cached(e))
	}
	if b.HostID != h.id || !b.Time.Equal(now) || b.Proto != proto.Version || b.Inventory != nil || !slices.Equal(b.Cache, want) {
		t.Fatalf("full beat = %+v", b)
	}
	if len(b.Slots) != gpusPerHost*slotsPerGPU || len(b.Slots[5].Resident) != 1 || len(b.GPUs) != gpusPerHost {
		t.Fatalf("full beat's slots %+v, gpus %+v", b.Slots, b.GPUs)
	}
	if n := len(b.Cache); n != cfg.Blobs {
		t.Fatalf("%d cached blobs, want %d", n, cfg.Blobs)
	}

	fl = newFleet(cfg, ModeDelta)
	h = fl.hosts[0]
	first := fl.buildBeat(0, now, nil)
	b = decode(first.body)
	if b.Cache != nil || b.Inventory == nil || b.Inventory.Base != 0 || len(b.Inventory.Added) != cfg.Blobs {
		t.Fatalf("first delta-mode beat = %+v", b.Inventory)
	}
	fl.answered(0, first, proto.HeartbeatAck{InventoryVersion: b.Inventory.Version}, true)
	if b = decode(fl.buildBeat(0, now, nil).body); b.Inventory != nil {
		t.Fatalf("beat without change carries %+v", b.Inventory)
	}
	before := slices.Clone(h.inv)
	for range 3 {
		fl.change(0)
	}
	d := fl.buildBeat(0, now, nil)
	b = decode(d.body)
	if b.Inventory == nil || b.Inventory.Base != first.version || len(b.Inventory.Added)+len(b.Inventory.Removed) == 0 {
		t.Fatalf("beat after changes = %+v", b.Inventory)
	}
	// Applying the delta to the acknowledged inventory gives the new one.
	held := map[proto.Digest]proto.CachedBlob{}
	for _, e := range before {
		held[fl.cat.digests[e.model]] = fl.cat.cached(e)
	}
	for _, dg := range b.Inventory.Removed {
		delete(held, dg)
	}
	for _, cb := range b.Inventory.Added {
		held[cb.Digest] = cb
	}
	if len(held) != len(h.inv) {
		t.Fatalf("delta applied gives %d blobs, the host holds %d", len(held), len(h.inv))
	}
	for _, e := range h.inv {
		if held[fl.cat.digests[e.model]] != fl.cat.cached(e) {
			t.Fatalf("delta applied disagrees on %v", fl.cat.cached(e))
		}
	}
	// A coordinator that holds nothing: the whole inventory again.
	fl.answered(0, d, proto.HeartbeatAck{}, true)
	if b = decode(fl.buildBeat(0, now, nil).body); b.Inventory == nil || b.Inventory.Base != 0 || b.Inventory.Version <= d.version {
		t.Fatalf("beat after ack 0 = %+v", b.Inventory)
	}
}
