package gpu

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// captureLogger returns a logger that writes text records into buf.
func captureLogger(buf *bytes.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestDetectFallsBackAndSaysWhy(t *testing.T) {
	var buf bytes.Buffer
	failing := func() (Devices, error) {
		return nil, errors.New("gpu: NVML init: ERROR_LIBRARY_NOT_FOUND")
	}
	d := detect(captureLogger(&buf), nil, failing)
	defer d.Close()

	if d.Kind() != KindSimulated {
		t.Fatalf("Kind() = %q, want simulated", d.Kind())
	}
	devs, err := d.Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].Name != DefaultSimGPU.Name || devs[0].MemoryTotal != 141<<30 {
		t.Fatalf("default inventory = %+v, want one %s of 141 GiB", devs, DefaultSimGPU.Name)
	}
	log := buf.String()
	for _, want := range []string{"level=WARN", "NVML is unavailable", "simulated", "ERROR_LIBRARY_NOT_FOUND"} {
		if !strings.Contains(log, want) {
			t.Errorf("log does not contain %q:\n%s", want, log)
		}
	}
}

func TestDetectUsesConfiguredInventory(t *testing.T) {
	var buf bytes.Buffer
	sim := []SimGPU{{Name: "A", MemoryBytes: 8 << 30}, {Name: "B", MemoryBytes: 16 << 30}}
	d := detect(captureLogger(&buf), sim, func() (Devices, error) { return nil, errors.New("no driver") })
	devs, _ := d.Devices()
	if len(devs) != 2 || devs[0].Name != "A" || devs[1].Name != "B" {
		t.Fatalf("inventory = %+v, want the configured A and B", devs)
	}
}

// fakeDevices is a Devices whose reading is fixed, for the NVML side of
// detect.
type fakeDevices struct {
	devs   []Device
	err    error
	closed int
}

func (f *fakeDevices) Kind() string               { return KindNVML }
func (f *fakeDevices) Devices() ([]Device, error) { return f.devs, f.err }
func (f *fakeDevices) Close() error               { f.closed++; return nil }

func TestDetectPrefersNVML(t *testing.T) {
	var buf bytes.Buffer
	real := &fakeDevices{devs: []Device{{Index: 0, Name: "NVIDIA H200", MemoryTotal: 141 << 30}}}
	d := detect(captureLogger(&buf), nil, func() (Devices, error) { return real, nil })
	if d != Devices(real) {
		t.Fatalf("detect returned %T, want the NVML source", d)
	}
	if real.closed != 0 {
		t.Fatal("detect closed the NVML source it returned")
	}
	if strings.Contains(buf.String(), "level=WARN") {
		t.Fatalf("unexpected warning:\n%s", buf.String())
	}
}

func TestDetectFallsBackWhenNVMLCannotRead(t *testing.T) {
	for name, real := range map[string]*fakeDevices{
		"no devices":   {},
		"read failure": {err: errors.New("gpu: NVML device count: ERROR_UNKNOWN")},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			d := detect(captureLogger(&buf), nil, func() (Devices, error) { return real, nil })
			if d.Kind() != KindSimulated {
				t.Fatalf("Kind() = %q, want simulated", d.Kind())
			}
			if real.closed != 1 {
				t.Fatalf("NVML source closed %d times, want 1", real.closed)
			}
			if !strings.Contains(buf.String(), "level=WARN") {
				t.Fatalf("no warning logged:\n%s", buf.String())
			}
		})
	}
}

// TestDetectOnThisHost runs the real factory. Without a driver (CI, dev
// machines) it must fall back and say so; on a GPU host it must find NVML.
func TestDetectOnThisHost(t *testing.T) {
	var buf bytes.Buffer
	d := Detect(captureLogger(&buf), nil)
	defer d.Close()
	devs, err := d.Devices()
	if err != nil {
		t.Fatalf("Devices(): %v", err)
	}
	if len(devs) == 0 {
		t.Fatal("Detect returned a source with no devices")
	}
	switch d.Kind() {
	case KindSimulated:
		if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "NVML is unavailable") {
			t.Fatalf("fell back without a warning:\n%s", buf.String())
		}
		t.Logf("no NVML here, as expected without a driver: %s", strings.TrimSpace(buf.String()))
	case KindNVML:
		t.Logf("NVML found %d device(s): %+v", len(devs), devs)
	default:
		t.Fatalf("unknown kind %q", d.Kind())
	}
}

func TestDetectNilLogger(t *testing.T) {
	var buf bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(captureLogger(&buf))
	defer slog.SetDefault(prev)
	d := detect(nil, nil, func() (Devices, error) { return nil, errors.New("no driver") })
	if d.Kind() != KindSimulated {
		t.Fatalf("Kind() = %q", d.Kind())
	}
	if !strings.Contains(buf.String(), "level=WARN") {
		t.Fatalf("nil logger: warning not sent to slog.Default:\n%s", buf.String())
	}
}
