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
	}
}

// mockLib is a driver with devs and every symbol except those in missing.
func mockLib(devs []*mock.Device, missing ...string) (*mock.Interface, *int) {
	shutdowns := new(int)
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
	}
	return lib, shutdowns
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
		MemoryUsed: 500_000_000, MemoryFree: 149_500_000_000, UtilizationPct: 37, TemperatureC: 41}
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
			d, err := newNVML(lib)
			if err != nil {
				t.Fatal(err)
			}
			devs, err := d.Devices()
			if err != nil {
				t.Fatalf("Devices(): %v", err)
			}
			if len(devs) != 1 || devs[0].UtilizationPct != 0 || devs[0].MemoryTotal != 40<<30 {
				t.Fatalf("Devices() = %+v", devs)
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
	if _, err := d.Devices(); !errors.Is(err, nvml.ERROR_GPU_IS_LOST) || !strings.Contains(err.Error(), "GPU-lost") {
		t.Fatalf("Devices() = %v, want ERROR_GPU_IS_LOST naming the device", err)
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
