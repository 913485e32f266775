package gpu

import (
	"fmt"
	"sync"
)

// DefaultSimGPU is the inventory Detect simulates when the config names
// none: one H200-sized device, so the demo's slot arithmetic looks like the
// hardware hearth was measured on.
var DefaultSimGPU = SimGPU{Name: "Simulated H200", MemoryBytes: 141 << 30}

// SimGPU configures one simulated device.
type SimGPU struct {
	Name        string `json:"name"`
	MemoryBytes uint64 `json:"memory_bytes"`
}

// simDevices reports a fixed inventory. It stands in for NVML on hosts
// without a GPU: every reading is the configured name and size, all memory
// free, utilization and temperature zero.
type simDevices struct {
	mu     sync.Mutex
	gpus   []SimGPU
	closed bool
}

// NewSimulated returns Devices that report gpus, in order, as devices
// 0..len-1 with UUIDs "GPU-sim-<index>". The UUIDs are deterministic so a
// restarted agent keeps its identity and tests can name devices. An empty
// name reads as "Simulated GPU".
func NewSimulated(gpus []SimGPU) Devices {
	return &simDevices{gpus: append([]SimGPU(nil), gpus...)}
}

func (s *simDevices) Kind() string { return KindSimulated }

func (s *simDevices) Devices() ([]Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	out := make([]Device, len(s.gpus))
	for i, g := range s.gpus {
		name := g.Name
		if name == "" {
			name = "Simulated GPU"
		}
		out[i] = Device{
			Index:       i,
			UUID:        fmt.Sprintf("GPU-sim-%d", i),
			Name:        name,
			MemoryTotal: g.MemoryBytes,
			MemoryFree:  g.MemoryBytes,
		}
	}
	return out, nil
}

func (s *simDevices) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
