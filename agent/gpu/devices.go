package gpu

import (
	"errors"

	"github.com/hearth-gpu/hearth/proto"
)

// Kinds reported by Devices.Kind.
const (
	KindNVML      = "nvml"
	KindSimulated = "simulated"
)

// ErrClosed is returned by Devices after Close.
var ErrClosed = errors.New("gpu: devices closed")

// ErrGPULost is wrapped by the error Devices returns when a GPU has fallen
// off the bus (NVML's GPU_IS_LOST): the device is unusable until it is reset
// or the host rebooted, so the agent should report itself degraded.
var ErrGPULost = errors.New("gpu: a GPU fell off the bus")

// Device is one reading of one GPU. Memory figures are bytes.
type Device struct {
	Index          int
	UUID           string
	Name           string
	MemoryTotal    uint64
	MemoryUsed     uint64
	MemoryFree     uint64
	UtilizationPct int
	TemperatureC   int
	// Processes are the compute processes using the device, with the
	// memory each holds; nil where the driver cannot say. The agent
	// subtracts what processes it does not manage hold from its slots.
	Processes []Process
	// MIGEnabled is set for a device in MIG mode: its memory belongs to MIG
	// instances, which hearth does not carve into slots.
	MIGEnabled bool
	// ECCUncorrected counts uncorrected ECC errors since the driver loaded
	// (volatile counter; 0 where ECC is off or unsupported).
	ECCUncorrected uint64
	// Fault, when set, says why the device should take no new work (a
	// retired-page or remapping failure pending, a critical XID event
	// seen); "" when healthy or unknown.
	Fault string
}

// Process is one compute process on a device.
type Process struct {
	PID       int
	UsedBytes uint64
}

// Devices is a source of GPU readings: NVML on a real host, a configured
// inventory elsewhere. Implementations are safe for concurrent use.
type Devices interface {
	// Kind is KindNVML or KindSimulated.
	Kind() string
	// Devices returns a fresh reading of every device, ordered by index.
	Devices() ([]Device, error)
	// Close releases the underlying library; later calls return ErrClosed.
	Close() error
}

// ToProto describes d for the wire, with its memory carved into slots the
// same way NewSlotPool would carve it (zero slots where a pool could not be
// built).
func (d Device) ToProto(reserve, slotBytes uint64) proto.GPU {
	n, err := slotCount(d.MemoryTotal, reserve, slotBytes)
	if err != nil {
		n = 0
	}
	return proto.GPU{
		Index:          d.Index,
		UUID:           d.UUID,
		Name:           d.Name,
		MemoryTotal:    d.MemoryTotal,
		MemoryReserved: reserve,
		SlotBytes:      slotBytes,
		Slots:          n,
	}
}
