//go:build cgo

package gpu

import (
	"fmt"
	"strings"
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

// Optional readings: a driver without them reads as zero. NVML 13 deprecates
// nvmlDeviceGetTemperature for the versioned-struct nvmlDeviceGetTemperatureV,
// so the newer one is preferred where the driver has it. go-nvml's
// GetRemappedRows always calls the unversioned symbol (the _v2 struct form is
// a separate method that adds nothing we read).
const (
	symUtilization    = "nvmlDeviceGetUtilizationRates"
	symTemperature    = "nvmlDeviceGetTemperature"
	symTempV          = "nvmlDeviceGetTemperatureV"
	symMigMode        = "nvmlDeviceGetMigMode"
	symECC            = "nvmlDeviceGetTotalEccErrors"
	symRetiredPending = "nvmlDeviceGetRetiredPagesPendingStatus"
	symRemappedRows   = "nvmlDeviceGetRemappedRows"
)

// symProcesses are the spellings go-nvml's GetComputeRunningProcesses may
// call: it picks the newest the driver exports, each with its own struct
// layout, so any one of them is enough.
var symProcesses = []string{
	"nvmlDeviceGetComputeRunningProcesses_v3",
	"nvmlDeviceGetComputeRunningProcesses_v2",
	"nvmlDeviceGetComputeRunningProcesses",
}

// optional records which optional readings the driver can serve.
type optional struct {
	util, temp, tempV bool
	procs, mig, ecc   bool
	retired, remap    bool
	xid               bool
}

// nvmlDevices reads devices through an initialized NVML library.
type nvmlDevices struct {
	mu     sync.Mutex
	lib    nvml.Interface
	has    optional
	xid    *xidEvents // nil when XID events are unavailable
	closed bool
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
	has := func(alts ...string) bool {
		for _, sym := range alts {
			if ext.LookupSymbol(sym) == nil {
				return true
			}
		}
		return false
	}
	for _, alts := range requiredSymbols {
		if !has(alts...) {
			_ = lib.Shutdown()
			return nil, fmt.Errorf("gpu: NVML library lacks %s; upgrade the NVIDIA driver", alts[0])
		}
	}
	n := &nvmlDevices{lib: lib, has: optional{
		util:    has(symUtilization),
		temp:    has(symTemperature),
		tempV:   has(symTempV),
		procs:   has(symProcesses...),
		mig:     has(symMigMode),
		ecc:     has(symECC),
		retired: has(symRetiredPending),
		remap:   has(symRemappedRows),
		xid:     hasXIDSymbols(has),
	}}
	if n.has.xid {
		n.xid = registerXID(lib)
	}
	return n, nil
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
	if err := n.xid.drain(); err != nil {
		return nil, err
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
// other readings that fail (NOT_SUPPORTED on some boards, MIG mode, no
// permission) read as zero rather than hiding the device. A lost GPU fails
// the whole reading whichever call notices it, so the host goes degraded.
func (n *nvmlDevices) read(i int) (Device, error) {
	h, ret := n.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return Device{}, readErr(i, "", "handle", ret)
	}
	name, ret := h.GetName()
	if ret != nvml.SUCCESS {
		return Device{}, readErr(i, "", "name", ret)
	}
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return Device{}, readErr(i, "", "uuid", ret)
	}
	mem, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return Device{}, readErr(i, uuid, "memory info", ret)
	}
	d := Device{
		Index:       i,
		UUID:        uuid,
		Name:        name,
		MemoryTotal: mem.Total,
		MemoryUsed:  mem.Used,
		MemoryFree:  mem.Free,
	}
	// Each optional reading keeps its zero value unless it succeeds; only
	// a lost GPU is an error.
	lost := func(what string, ret nvml.Return) error {
		if ret == nvml.ERROR_GPU_IS_LOST {
			return readErr(i, uuid, what, ret)
		}
		return nil
	}
	if n.has.util {
		u, ret := h.GetUtilizationRates()
		if ret == nvml.SUCCESS {
			d.UtilizationPct = int(u.Gpu)
		} else if err := lost("utilization", ret); err != nil {
			return Device{}, err
		}
	}
	switch {
	case n.has.tempV:
		// SensorType 0 in the zeroed struct is NVML_TEMPERATURE_GPU.
		t, ret := h.GetTemperatureV().V1()
		if ret == nvml.SUCCESS {
			d.TemperatureC = int(t.Temperature)
		} else if err := lost("temperature", ret); err != nil {
			return Device{}, err
		}
	case n.has.temp:
		t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU)
		if ret == nvml.SUCCESS {
			d.TemperatureC = int(t)
		} else if err := lost("temperature", ret); err != nil {
			return Device{}, err
		}
	}
	if n.has.procs {
		ps, ret := h.GetComputeRunningProcesses()
		if ret == nvml.SUCCESS {
			d.Processes = make([]Process, 0, len(ps))
			for _, p := range ps {
				used := p.UsedGpuMemory
				// NVML_VALUE_NOT_AVAILABLE: the driver knows the process
				// but not its memory (MIG, another user's process).
				if used == valueNotAvailable {
					used = 0
				}
				d.Processes = append(d.Processes, Process{PID: int(p.Pid), UsedBytes: used})
			}
		} else if err := lost("compute processes", ret); err != nil {
			return Device{}, err
		}
	}
	if n.has.mig {
		cur, _, ret := h.GetMigMode()
		if ret == nvml.SUCCESS {
			d.MIGEnabled = cur == nvml.DEVICE_MIG_ENABLE
		} else if err := lost("MIG mode", ret); err != nil {
			return Device{}, err
		}
	}
	if n.has.ecc {
		c, ret := h.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC)
		if ret == nvml.SUCCESS {
			d.ECCUncorrected = c
		} else if err := lost("ECC errors", ret); err != nil {
			return Device{}, err
		}
	}
	var faults []string
	if n.has.retired {
		st, ret := h.GetRetiredPagesPendingStatus()
		if ret == nvml.SUCCESS {
			if st == nvml.FEATURE_ENABLED {
				faults = append(faults, "retired pages pending: reset the GPU")
			}
		} else if err := lost("retired pages", ret); err != nil {
			return Device{}, err
		}
	}
	if n.has.remap {
		_, _, pending, failed, ret := h.GetRemappedRows()
		switch {
		case ret != nvml.SUCCESS:
			if err := lost("remapped rows", ret); err != nil {
				return Device{}, err
			}
		case failed:
			faults = append(faults, "row remapping failed: the GPU needs service")
		case pending:
			faults = append(faults, "row remapping pending: reset the GPU")
		}
	}
	if f := n.xid.fault(uuid); f != "" {
		faults = append(faults, f)
	}
	d.Fault = strings.Join(faults, "; ")
	return d, nil
}

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE as an unsigned long long.
const valueNotAvailable = ^uint64(0)

// readErr describes a failed read of device i. A lost GPU wraps ErrGPULost
// as well as the NVML code.
func readErr(i int, uuid, what string, ret nvml.Return) error {
	dev := fmt.Sprintf("NVML device %d", i)
	if uuid != "" {
		dev += " (" + uuid + ")"
	}
	if ret == nvml.ERROR_GPU_IS_LOST {
		return fmt.Errorf("%w: %s, reading %s: %w; reset the GPU or reboot the host", ErrGPULost, dev, what, ret)
	}
	return fmt.Errorf("gpu: %s: %s: %w", dev, what, ret)
}

func (n *nvmlDevices) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	n.xid.free()
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS && ret != nvml.ERROR_UNINITIALIZED {
		return fmt.Errorf("gpu: NVML shutdown: %w", ret)
	}
	return nil
}
