//go:build cgo

package gpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// XID events are the driver's error reports (the "NVRM: Xid" lines in the
// kernel log). NVML delivers them through an event set: we register every
// device for critical XIDs once at init and, on each reading, drain what has
// queued without waiting. A critical XID is remembered as the device's Fault
// until the agent restarts, because NVML sends nothing when the condition
// clears (a reset is the operator's call, and restarting the agent after it
// is cheap).

// xidSymbols are the functions the event set needs, as requiredSymbols
// spells them: go-nvml's Wait calls nvmlEventSetWait_v2 where the driver has
// it. Missing any one turns XID reporting off.
var xidSymbols = [][]string{
	{"nvmlEventSetCreate"},
	{"nvmlDeviceRegisterEvents"},
	{"nvmlEventSetWait_v2", "nvmlEventSetWait"},
	{"nvmlEventSetFree"},
}

// criticalXIDs are the XIDs NVIDIA's XID catalog says leave the GPU itself
// needing a reset or service. Others (13, 31, 43, 45: a faulting or killed
// application) are about one job, not the device, and are ignored.
var criticalXIDs = map[uint64]string{
	48: "double-bit ECC error",
	63: "ECC page retirement or row remapping recorded",
	64: "ECC page retirement or row remapping failed",
	74: "NVLink error",
	79: "GPU fell off the bus",
	92: "high single-bit ECC error rate",
	94: "contained ECC error",
	95: "uncontained ECC error",
}

// maxXIDDrain bounds one reading's drain so an event storm cannot stall it;
// the rest wait for the next reading.
const maxXIDDrain = 256

// xidEvents is the registered event set and what it has reported. Its
// methods accept a nil receiver (XID events unavailable) and do nothing.
// Callers hold nvmlDevices.mu.
type xidEvents struct {
	set   nvml.EventSet
	uuids map[nvml.Device]string // registered handles
	last  map[string]string      // device UUID -> last critical XID
}

func hasXIDSymbols(has func(...string) bool) bool {
	for _, alts := range xidSymbols {
		if !has(alts...) {
			return false
		}
	}
	return true
}

// registerXID creates the event set and registers each device that
// supports critical XID events. It returns nil when none does or anything
// fails: XIDs are an optional reading and never stop NVML from being used.
func registerXID(lib nvml.Interface) (x *xidEvents) {
	defer func() {
		// A set created before a panic is released by Shutdown.
		if recover() != nil {
			x = nil
		}
	}()
	set, ret := lib.EventSetCreate()
	if ret != nvml.SUCCESS {
		return nil
	}
	x = &xidEvents{set: set, uuids: map[nvml.Device]string{}, last: map[string]string{}}
	count, ret := lib.DeviceGetCount()
	for i := 0; ret == nvml.SUCCESS && i < count; i++ {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, ret := h.GetUUID()
		if ret != nvml.SUCCESS {
			continue
		}
		if h.RegisterEvents(nvml.EventTypeXidCriticalError, set) == nvml.SUCCESS {
			x.uuids[h] = uuid
		}
	}
	if len(x.uuids) == 0 {
		_ = set.Free()
		return nil
	}
	return x
}

// drain takes the events queued since the last reading (timeout 0, so it
// never blocks) and remembers each critical XID against its device.
func (x *xidEvents) drain() error {
	if x == nil {
		return nil
	}
	for range maxXIDDrain {
		e, ret := x.set.Wait(0)
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_GPU_IS_LOST:
			return fmt.Errorf("%w: waiting for XID events: %w; reset the GPU or reboot the host", ErrGPULost, ret)
		default:
			// ERROR_TIMEOUT: nothing queued. Anything else: try again
			// next reading rather than fail this one.
			return nil
		}
		what, critical := criticalXIDs[e.EventData]
		if e.EventType&nvml.EventTypeXidCriticalError == 0 || !critical {
			continue
		}
		if uuid := x.uuidOf(e.Device); uuid != "" {
			x.last[uuid] = fmt.Sprintf("XID %d: %s", e.EventData, what)
		}
	}
	return nil
}

// uuidOf names an event's device: by the handle registered at init, else by
// asking it (a handle NVML returns for an event need not be the same value).
func (x *xidEvents) uuidOf(d nvml.Device) string {
	if d == nil {
		return ""
	}
	if uuid, ok := x.uuids[d]; ok {
		return uuid
	}
	if uuid, ret := d.GetUUID(); ret == nvml.SUCCESS {
		return uuid
	}
	return ""
}

// fault is the last critical XID seen on the device, "" if none.
func (x *xidEvents) fault(uuid string) string {
	if x == nil {
		return ""
	}
	return x.last[uuid]
}

// free releases the event set. Its failure is not worth reporting: Shutdown,
// which follows, releases it anyway.
func (x *xidEvents) free() {
	if x != nil {
		_ = x.set.Free()
	}
}
