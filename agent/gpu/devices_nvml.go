//go:build cgo

package gpu

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// go-nvml links every NVML function as an unresolved symbol and dlopens
// libnvidia-ml at Init. Calling a function the installed driver does not
// export is not a Go panic that recover() could catch: the dynamic linker
// aborts the process. So after Init we look up every symbol we will call and
// refuse (required) or skip (optional) the ones that are missing. The
// recover() in Devices only guards go-nvml's own Go code.

// requiredSymbols lists, per function we cannot do without, the symbol names
// any one of which go-nvml may call (it prefers the versioned one when the
// driver has it).
var requiredSymbols = [][]string{
	{"nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"},
	{"nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"},
	{"nvmlDeviceGetName"},
	{"nvmlDeviceGetUUID"},
	{"nvmlDeviceGetMemoryInfo"},
}

// Optional sensors: a driver without them reads as zero. NVML 13 deprecates
// nvmlDeviceGetTemperature for the versioned-struct nvmlDeviceGetTemperatureV,
// so the newer one is preferred where the driver has it.
const (
	symUtilization = "nvmlDeviceGetUtilizationRates"
	symTemperature = "nvmlDeviceGetTemperature"
	symTempV       = "nvmlDeviceGetTemperatureV"
)

// nvmlDevices reads devices through an initialized NVML library.
type nvmlDevices struct {
	mu      sync.Mutex
	lib     nvml.Interface
	hasUtil bool
	hasTemp bool
	hasTmpV bool
	closed  bool
}

// NewNVML initializes NVML and returns Devices backed by it. It fails, with
// an error that says what to check, when the driver library is absent, the
// kernel driver is not loaded, or the library lacks a function hearth needs.
func NewNVML() (Devices, error) {
	return newNVML(nvml.New())
}

// newNVML takes the library as a parameter so tests can pass go-nvml's mock.
func newNVML(lib nvml.Interface) (d Devices, err error) {
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("gpu: NVML panicked during init: %v", r)
		}
	}()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: NVML init: %w%s", ret, initHint(ret))
	}
	ext := lib.Extensions()
	has := func(sym string) bool { return ext.LookupSymbol(sym) == nil }
	for _, alts := range requiredSymbols {
		found := false
		for _, sym := range alts {
			if has(sym) {
				found = true
				break
			}
		}
		if !found {
			_ = lib.Shutdown()
			return nil, fmt.Errorf("gpu: NVML library lacks %s; upgrade the NVIDIA driver", alts[0])
		}
	}
	return &nvmlDevices{lib: lib, hasUtil: has(symUtilization), hasTemp: has(symTemperature), hasTmpV: has(symTempV)}, nil
}

// initHint turns the common Init failures into advice.
func initHint(ret nvml.Return) string {
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return " (libnvidia-ml.so.1 could not be loaded: is the NVIDIA driver installed on this host?)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return " (the NVIDIA kernel module is not loaded: check nvidia-smi and dmesg)"
	case nvml.ERROR_NO_PERMISSION:
		return " (no permission to open /dev/nvidia*: run the agent as a user in the video group)"
	}
	return ""
}

func (n *nvmlDevices) Kind() string { return KindNVML }

func (n *nvmlDevices) Devices() (devs []Device, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	defer func() {
		if r := recover(); r != nil {
			devs, err = nil, fmt.Errorf("gpu: NVML panicked while reading devices: %v", r)
		}
	}()
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("gpu: NVML device count: %w", ret)
	}
	devs = make([]Device, 0, count)
	for i := 0; i < count; i++ {
		d, err := n.read(i)
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	return devs, nil
}

// read takes one reading of device i. Identity and memory must succeed;
// sensors that fail (NOT_SUPPORTED on some boards, MIG mode) read as zero
// rather than hiding the device.
func (n *nvmlDevices) read(i int) (Device, error) {
	h, ret := n.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("gpu: NVML device %d: handle: %w", i, ret)
	}
	name, ret := h.GetName()
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("gpu: NVML device %d: name: %w", i, ret)
	}
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("gpu: NVML device %d: uuid: %w", i, ret)
	}
	mem, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return Device{}, fmt.Errorf("gpu: NVML device %d (%s): memory info: %w", i, uuid, ret)
	}
	d := Device{
		Index:       i,
		UUID:        uuid,
		Name:        name,
		MemoryTotal: mem.Total,
		MemoryUsed:  mem.Used,
		MemoryFree:  mem.Free,
	}
	if n.hasUtil {
		if u, ret := h.GetUtilizationRates(); ret == nvml.SUCCESS {
			d.UtilizationPct = int(u.Gpu)
		}
	}
	switch {
	case n.hasTmpV:
		// SensorType 0 in the zeroed struct is NVML_TEMPERATURE_GPU.
		if t, ret := h.GetTemperatureV().V1(); ret == nvml.SUCCESS {
			d.TemperatureC = int(t.Temperature)
		}
	case n.hasTemp:
		if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
			d.TemperatureC = int(t)
		}
	}
	return d, nil
}

func (n *nvmlDevices) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS && ret != nvml.ERROR_UNINITIALIZED {
		return fmt.Errorf("gpu: NVML shutdown: %w", ret)
	}
	return nil
}
