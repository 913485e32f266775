//go:build cgo

package gpu

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// These tests drive the NVML adapter through go-nvml's generated mock, the
// stand-in for a driver on hosts without a GPU.

// mockDevice is a healthy device: one compute process, MIG off, no ECC
// errors, nothing pending, and XID events supported.
func mockDevice(name, uuid string, total, used uint64) *mock.Device {
	return &mock.Device{
		GetNameFunc: func() (string, nvml.Return) { return name, nvml.SUCCESS },
		GetUUIDFunc: func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: 37}, nvml.SUCCESS
		},
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 41, nvml.SUCCESS },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			return []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 1 << 30}}, nvml.SUCCESS
		},
		GetMigModeFunc: func() (int, int, nvml.Return) {
			return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS
		},
		GetTotalEccErrorsFunc: func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
			return 0, nvml.SUCCESS
		},
		GetRetiredPagesPendingStatusFunc: func() (nvml.EnableState, nvml.Return) {
			return nvml.FEATURE_DISABLED, nvml.SUCCESS
		},
		GetRemappedRowsFunc: func() (int, int, bool, bool, nvml.Return) {
			return 0, 0, false, false, nvml.SUCCESS
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS },
	}
}

// mockEvents is an event set that delivers queue, one event per Wait, then
// times out as NVML does when nothing is pending.
func mockEvents(queue ...nvml.EventData) *mock.EventSet {
	return &mock.EventSet{
		WaitFunc: func(uint32) (nvml.EventData, nvml.Return) {
			if len(queue) == 0 {
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
			e := queue[0]
			queue = queue[1:]
			return e, nvml.SUCCESS
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
}

// mockLib is a driver with devs and every symbol except those in missing.
// Its event set never has an event pending.
func mockLib(devs []*mock.Device, missing ...string) (*mock.Interface, *int) {
	shutdowns := new(int)
	events := mockEvents()
	lib := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { *shutdowns++; return nvml.SUCCESS },
		ExtensionsFunc: func() nvml.ExtendedInterface {
			return &mock.ExtendedInterface{LookupSymbolFunc: func(sym string) error {
				// The versioned temperature call cannot be mocked (its
				// handler is a concrete type), so the mock driver lacks it.
				if sym == symTempV {
					return errors.New("not found")
				}
				for _, m := range missing {
					if sym == m {
						return errors.New("not found")
					}
				}
				return nil
			}}
		},
		DeviceGetCountFunc: func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return events, nvml.SUCCESS },
	}
	return lib, shutdowns
}

// openAndRead opens lib and takes one reading; the caller closes it.
func openAndRead(t *testing.T, lib nvml.Interface) (Devices, []Device) {
	t.Helper()
	d, err := newNVML(lib)
	if err != nil {
		t.Fatalf("newNVML: %v", err)
	}
	devs, err := d.Devices()
	if err != nil {
		d.Close()
		t.Fatalf("Devices(): %v", err)
	}
	return d, devs
}

// readOne opens lib and takes one reading of its only device.
func readOne(t *testing.T, lib nvml.Interface) Device {
	t.Helper()
	d, devs := openAndRead(t, lib)
	t.Cleanup(func() { _ = d.Close() })
	if len(devs) != 1 {
		t.Fatalf("Devices() = %+v, want one device", devs)
	}
	return devs[0]
}

func TestNVMLReadsDevices(t *testing.T) {
	lib, shutdowns := mockLib([]*mock.Device{
		mockDevice("NVIDIA H200", "GPU-aaaa", 150_000_000_000, 500_000_000),
		mockDevice("NVIDIA H200", "GPU-bbbb", 150_000_000_000, 0),
	})
	d, err := newNVML(lib)
	if err != nil {
		t.Fatalf("newNVML: %v", err)
	}
	if d.Kind() != KindNVML {
		t.Fatalf("Kind() = %q", d.Kind())
	}
	devs, err := d.Devices()
	if err != nil {
		t.Fatalf("Devices(): %v", err)
	}
	want := Device{Index: 0, UUID: "GPU-aaaa", Name: "NVIDIA H200", MemoryTotal: 150_000_000_000,
		MemoryUsed: 500_000_000, MemoryFree: 149_500_000_000, UtilizationPct: 37, TemperatureC: 41,
		Processes: []Process{{PID: 4242, UsedBytes: 1 << 30}}}
	if len(devs) != 2 || !reflect.DeepEqual(devs[0], want) || devs[1].Index != 1 || devs[1].UUID != "GPU-bbbb" {
		t.Fatalf("Devices() = %+v, want [%+v, GPU-bbbb]", devs, want)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil || *shutdowns != 1 {
		t.Fatalf("second Close = %v with %d shutdowns, want nil and 1", err, *shutdowns)
	}
	if _, err := d.Devices(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Devices() after Close = %v, want ErrClosed", err)
	}
}

func TestNVMLReadsHealthReadings(t *testing.T) {
	dev := mockDevice("NVIDIA A100", "GPU-mig", 80<<30, 0)
	dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		// Under MIG the driver knows the processes but not their memory.
		return []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 2 << 30}, {Pid: 200, UsedGpuMemory: ^uint64(0)}}, nvml.SUCCESS
	}
	dev.GetMigModeFunc = func() (int, int, nvml.Return) {
		return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
	}
	dev.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 3, nvml.SUCCESS }
	lib, _ := mockLib([]*mock.Device{dev})
	got := readOne(t, lib)
	want := []Process{{PID: 100, UsedBytes: 2 << 30}, {PID: 200, UsedBytes: 0}}
	if !reflect.DeepEqual(got.Processes, want) || !got.MIGEnabled || got.ECCUncorrected != 3 || got.Fault != "" {
		t.Fatalf("reading = %+v, want processes %+v, MIG on, 3 ECC errors, no fault", got, want)
	}
	calls := dev.GetTotalEccErrorsCalls()
	if len(calls) != 1 || calls[0].MemoryErrorType != nvml.MEMORY_ERROR_TYPE_UNCORRECTED || calls[0].EccCounterType != nvml.VOLATILE_ECC {
		t.Fatalf("GetTotalEccErrors calls = %+v, want one for uncorrected volatile errors", calls)
	}

	// A pending MIG change is not the current mode.
	dev.GetMigModeFunc = func() (int, int, nvml.Return) {
		return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
	}
	if got := readOne(t, lib); got.MIGEnabled {
		t.Fatalf("MIGEnabled with MIG only pending: %+v", got)
	}

	// No processes is an empty list, not "unknown".
	dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	if got := readOne(t, lib); got.Processes == nil || len(got.Processes) != 0 {
		t.Fatalf("Processes with none running = %#v, want empty and non-nil", got.Processes)
	}
}

// faultyDevice reports a value for every optional reading, so a reading that
// should have been skipped shows up as non-zero.
func faultyDevice() *mock.Device {
	dev := mockDevice("NVIDIA H100", "GPU-old", 80<<30, 0)
	dev.GetMigModeFunc = func() (int, int, nvml.Return) { return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS }
	dev.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 9, nvml.SUCCESS }
	dev.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_ENABLED, nvml.SUCCESS }
	dev.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, true, false, nvml.SUCCESS }
	return dev
}

func TestNVMLHealthSymbolsAbsent(t *testing.T) {
	cases := []struct {
		name    string
		missing []string
		check   func(d Device, dev *mock.Device, lib *mock.Interface) bool
	}{
		{"processes", symProcesses, func(d Device, dev *mock.Device, _ *mock.Interface) bool {
			return d.Processes == nil && len(dev.GetComputeRunningProcessesCalls()) == 0
		}},
		{"MIG mode", []string{symMigMode}, func(d Device, dev *mock.Device, _ *mock.Interface) bool {
			return !d.MIGEnabled && len(dev.GetMigModeCalls()) == 0
		}},
		{"ECC", []string{symECC}, func(d Device, dev *mock.Device, _ *mock.Interface) bool {
			return d.ECCUncorrected == 0 && len(dev.GetTotalEccErrorsCalls()) == 0
		}},
		{"retired pages", []string{symRetiredPending}, func(d Device, dev *mock.Device, _ *mock.Interface) bool {
			return !strings.Contains(d.Fault, "retired") && len(dev.GetRetiredPagesPendingStatusCalls()) == 0
		}},
		{"remapped rows", []string{symRemappedRows}, func(d Device, dev *mock.Device, _ *mock.Interface) bool {
			return !strings.Contains(d.Fault, "remapping") && len(dev.GetRemappedRowsCalls()) == 0
		}},
	}
	noEvents := func(_ Device, dev *mock.Device, lib *mock.Interface) bool {
		return len(lib.EventSetCreateCalls()) == 0 && len(dev.RegisterEventsCalls()) == 0
	}
	for _, alts := range xidSymbols {
		cases = append(cases, struct {
			name    string
			missing []string
			check   func(d Device, dev *mock.Device, lib *mock.Interface) bool
		}{"events " + alts[0], alts, noEvents})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dev := faultyDevice()
			lib, _ := mockLib([]*mock.Device{dev}, c.missing...)
			got := readOne(t, lib)
			if !c.check(got, dev, lib) {
				t.Fatalf("reading without %v = %+v, want that reading zero and its function never called", c.missing, got)
			}
			// The other readings are unaffected.
			if got.MemoryTotal != 80<<30 || got.TemperatureC != 41 || got.Fault == "" {
				t.Fatalf("reading without %v lost other readings: %+v", c.missing, got)
			}
		})
	}

	// Any one spelling of a versioned function is enough.
	dev := faultyDevice()
	lib, _ := mockLib([]*mock.Device{dev}, "nvmlDeviceGetComputeRunningProcesses_v3",
		"nvmlDeviceGetComputeRunningProcesses_v2", "nvmlEventSetWait_v2")
	if got := readOne(t, lib); len(got.Processes) != 1 || len(dev.RegisterEventsCalls()) != 1 {
		t.Fatalf("with only v1 symbols: reading %+v, %d event registrations; want processes and events",
			got, len(dev.RegisterEventsCalls()))
	}
}

func TestNVMLHealthUnsupported(t *testing.T) {
	dev := mockDevice("NVIDIA T4", "GPU-t4", 16<<30, 0)
	dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_NO_PERMISSION }
	dev.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED }
	dev.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) {
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	dev.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED }
	dev.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, true, true, nvml.ERROR_NOT_SUPPORTED }
	dev.RegisterEventsFunc = func(uint64, nvml.EventSet) nvml.Return { return nvml.ERROR_NOT_SUPPORTED }
	events := mockEvents()
	lib, _ := mockLib([]*mock.Device{dev})
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return events, nvml.SUCCESS }
	d, devs := openAndRead(t, lib)
	got := devs[0]
	if got.Processes != nil || got.MIGEnabled || got.ECCUncorrected != 0 || got.Fault != "" || got.MemoryTotal != 16<<30 {
		t.Fatalf("reading with nothing supported = %+v, want zero health readings", got)
	}
	// No device took the registration, so the set is freed at once and
	// never waited on.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if len(events.FreeCalls()) != 1 || len(events.WaitCalls()) != 0 {
		t.Fatalf("event set: %d frees, %d waits; want 1 and 0", len(events.FreeCalls()), len(events.WaitCalls()))
	}

	// Nor does a driver that cannot create a set stop NVML being used.
	lib, _ = mockLib([]*mock.Device{mockDevice("NVIDIA T4", "GPU-t4", 16<<30, 0)})
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	readOne(t, lib)
}

func TestNVMLFaults(t *testing.T) {
	for _, c := range []struct {
		name            string
		retired         nvml.EnableState
		pending, failed bool
		want            string
	}{
		{"healthy", nvml.FEATURE_DISABLED, false, false, ""},
		{"retired pages", nvml.FEATURE_ENABLED, false, false, "retired pages pending: reset the GPU"},
		{"remap pending", nvml.FEATURE_DISABLED, true, false, "row remapping pending: reset the GPU"},
		{"remap failed", nvml.FEATURE_DISABLED, true, true, "row remapping failed: the GPU needs service"},
		{"both", nvml.FEATURE_ENABLED, false, true, "retired pages pending: reset the GPU; row remapping failed: the GPU needs service"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := mockDevice("NVIDIA H200", "GPU-f", 141<<30, 0)
			dev.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return c.retired, nvml.SUCCESS }
			dev.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 1, c.pending, c.failed, nvml.SUCCESS }
			lib, _ := mockLib([]*mock.Device{dev})
			if got := readOne(t, lib); got.Fault != c.want {
				t.Fatalf("Fault = %q, want %q", got.Fault, c.want)
			}
		})
	}
}

func TestNVMLGPULost(t *testing.T) {
	lostRet := nvml.ERROR_GPU_IS_LOST
	for name, breakIt := range map[string]func(*mock.Device, *mock.Interface){
		"memory info": func(d *mock.Device, _ *mock.Interface) {
			d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, lostRet }
		},
		"utilization": func(d *mock.Device, _ *mock.Interface) {
			d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, lostRet }
		},
		"processes": func(d *mock.Device, _ *mock.Interface) {
			d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, lostRet }
		},
		"MIG mode": func(d *mock.Device, _ *mock.Interface) {
			d.GetMigModeFunc = func() (int, int, nvml.Return) { return 0, 0, lostRet }
		},
		"ECC": func(d *mock.Device, _ *mock.Interface) {
			d.GetTotalEccErrorsFunc = func(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return) { return 0, lostRet }
		},
		"retired pages": func(d *mock.Device, _ *mock.Interface) {
			d.GetRetiredPagesPendingStatusFunc = func() (nvml.EnableState, nvml.Return) { return 0, lostRet }
		},
		"remapped rows": func(d *mock.Device, _ *mock.Interface) {
			d.GetRemappedRowsFunc = func() (int, int, bool, bool, nvml.Return) { return 0, 0, false, false, lostRet }
		},
		"event wait": func(_ *mock.Device, l *mock.Interface) {
			set := mockEvents()
			set.WaitFunc = func(uint32) (nvml.EventData, nvml.Return) { return nvml.EventData{}, lostRet }
			l.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
		},
	} {
		t.Run(name, func(t *testing.T) {
			dev := mockDevice("NVIDIA H200", "GPU-lost", 141<<30, 0)
			lib, _ := mockLib([]*mock.Device{dev})
			breakIt(dev, lib)
			d, err := newNVML(lib)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			_, err = d.Devices()
			if !errors.Is(err, ErrGPULost) || !errors.Is(err, nvml.ERROR_GPU_IS_LOST) || !strings.Contains(err.Error(), "fell off the bus") {
				t.Fatalf("Devices() = %v, want ErrGPULost wrapping ERROR_GPU_IS_LOST", err)
			}
			if name != "event wait" && !strings.Contains(err.Error(), "GPU-lost") {
				t.Fatalf("Devices() = %v, want the lost device named", err)
			}
		})
	}
}

func TestNVMLXIDEvents(t *testing.T) {
	dev0 := mockDevice("NVIDIA H200", "GPU-aaaa", 141<<30, 0)
	dev1 := mockDevice("NVIDIA H200", "GPU-bbbb", 141<<30, 0)
	xid := func(d nvml.Device, code uint64) nvml.EventData {
		return nvml.EventData{Device: d, EventType: nvml.EventTypeXidCriticalError, EventData: code}
	}
	events := mockEvents(
		xid(dev0, 13), // an application fault: not the device's
		xid(dev1, 48),
		xid(dev1, 79), // the last critical one is kept
	)
	lib, _ := mockLib([]*mock.Device{dev0, dev1})
	lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return events, nvml.SUCCESS }
	d, err := newNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	read := func() []Device {
		t.Helper()
		devs, err := d.Devices()
		if err != nil {
			t.Fatalf("Devices(): %v", err)
		}
		return devs
	}
	devs := read()
	if devs[0].Fault != "" || devs[1].Fault != "XID 79: GPU fell off the bus" {
		t.Fatalf("Faults = %q, %q; want none and XID 79", devs[0].Fault, devs[1].Fault)
	}
	for _, c := range events.WaitCalls() {
		if c.V != 0 {
			t.Fatalf("Wait called with timeout %d ms, want 0 (never block a reading)", c.V)
		}
	}
	// Registered once at init, for critical XIDs only.
	for _, dev := range []*mock.Device{dev0, dev1} {
		if c := dev.RegisterEventsCalls(); len(c) != 1 || c[0].V != nvml.EventTypeXidCriticalError || c[0].EventSet != events {
			t.Fatalf("RegisterEvents calls = %+v, want one for critical XIDs on the set", c)
		}
	}

	// The fault outlives the event; an event whose handle is not the one
	// registered is matched by UUID.
	other := mockDevice("NVIDIA H200", "GPU-aaaa", 141<<30, 0)
	events.WaitFunc = mockEvents(xid(other, 94)).WaitFunc
	devs = read()
	if devs[0].Fault != "XID 94: contained ECC error" || devs[1].Fault != "XID 79: GPU fell off the bus" {
		t.Fatalf("Faults = %q, %q; want XID 94 and still XID 79", devs[0].Fault, devs[1].Fault)
	}
	if len(dev0.RegisterEventsCalls()) != 1 {
		t.Fatal("RegisterEvents called again on a later reading")
	}

	// An event storm cannot stall a reading.
	events.WaitFunc = func(uint32) (nvml.EventData, nvml.Return) { return xid(dev0, 31), nvml.SUCCESS }
	before := len(events.WaitCalls())
	read()
	if n := len(events.WaitCalls()) - before; n != maxXIDDrain {
		t.Fatalf("a storm took %d waits, want the bound %d", n, maxXIDDrain)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if len(events.FreeCalls()) != 1 {
		t.Fatalf("event set freed %d times by Close, want 1", len(events.FreeCalls()))
	}
}

func TestNVMLSensorsAreOptional(t *testing.T) {
	unsupported := mockDevice("NVIDIA A100", "GPU-mig", 40<<30, 0)
	unsupported.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
		return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED
	}
	for name, lib := range map[string]*mock.Interface{
		"not supported": func() *mock.Interface { l, _ := mockLib([]*mock.Device{unsupported}); return l }(),
		"symbols missing": func() *mock.Interface {
			dev := mockDevice("NVIDIA A100", "GPU-old", 40<<30, 0)
			// Calling an absent symbol would kill the process; the mock
			// panics instead, so a call here fails the test.
			dev.GetUtilizationRatesFunc, dev.GetTemperatureFunc = nil, nil
			l, _ := mockLib([]*mock.Device{dev}, symUtilization, symTemperature)
			return l
		}(),
	} {
		t.Run(name, func(t *testing.T) {
			if got := readOne(t, lib); got.UtilizationPct != 0 || got.MemoryTotal != 40<<30 {
				t.Fatalf("reading = %+v", got)
			}
		})
	}
}

func TestNVMLInitFailures(t *testing.T) {
	lib, _ := mockLib(nil)
	lib.InitFunc = func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }
	_, err := newNVML(lib)
	if err == nil || !errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) || !strings.Contains(err.Error(), "driver installed") {
		t.Fatalf("newNVML with no library = %v, want ERROR_LIBRARY_NOT_FOUND with a hint", err)
	}

	lib, shutdowns := mockLib(nil, "nvmlDeviceGetMemoryInfo")
	_, err = newNVML(lib)
	if err == nil || !strings.Contains(err.Error(), "nvmlDeviceGetMemoryInfo") || *shutdowns != 1 {
		t.Fatalf("newNVML without a required symbol = %v (%d shutdowns), want an error naming it and a shutdown", err, *shutdowns)
	}

	// Either spelling of a versioned function is enough.
	lib, _ = mockLib(nil, "nvmlDeviceGetCount_v2")
	if _, err := newNVML(lib); err != nil {
		t.Fatalf("newNVML with only the v1 count symbol: %v", err)
	}
}

func TestNVMLReadFailures(t *testing.T) {
	lost := mockDevice("NVIDIA H200", "GPU-lost", 141<<30, 0)
	lost.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	lib, _ := mockLib([]*mock.Device{lost})
	d, err := newNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Devices(); !errors.Is(err, nvml.ERROR_GPU_IS_LOST) || !strings.Contains(err.Error(), "GPU-lost") ||
		!strings.Contains(err.Error(), "fell off the bus") {
		t.Fatalf("Devices() = %v, want ERROR_GPU_IS_LOST naming the device and saying it fell off the bus", err)
	}

	broken := mockDevice("NVIDIA H200", "GPU-x", 141<<30, 0)
	broken.GetUUIDFunc = nil // the mock panics, as a misbehaving binding might
	lib, _ = mockLib([]*mock.Device{broken})
	d, err = newNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Devices(); err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Devices() with a panicking binding = %v, want a recovered error", err)
	}
}

// TestNewNVMLOnThisHost calls the real library: on a host without a driver it
// must fail cleanly (no panic, no crash), on a GPU host it must read devices.
func TestNewNVMLOnThisHost(t *testing.T) {
	d, err := NewNVML()
	if err != nil {
		if !strings.HasPrefix(err.Error(), "gpu: ") {
			t.Fatalf("error lacks the package prefix: %v", err)
		}
		t.Logf("no NVML on this host: %v", err)
		return
	}
	defer d.Close()
	devs, err := d.Devices()
	if err != nil {
		t.Fatalf("Devices(): %v", err)
	}
	for _, dev := range devs {
		if dev.UUID == "" || dev.MemoryTotal == 0 {
			t.Errorf("implausible reading: %+v", dev)
		}
	}
	t.Logf("NVML devices: %+v", devs)
}
