package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/proto"
)

// foreignOwner holds, in a GPU's slot pool, the slots whose memory a
// process the agent does not manage has taken.
const foreignOwner = "foreign"

// accountVRAM keeps real GPU memory from being over-committed. Memory that
// compute processes outside the agent hold (another tenant, a stray
// notebook) first uses up the reserve and the bytes no slot covers; beyond
// that, whole slots are taken out of service, highest first: free slots,
// then slots whose worker is idle (stopping it frees its memory, which is
// the compaction the pool allows). Slots with work queued or running are
// never taken; what they cannot cover is logged as over-commitment. Slots
// come back as the foreign memory goes away.
func (a *Agent) accountVRAM(devs []gpu.Device) {
	byIndex := make(map[int]gpu.Device, len(devs))
	for _, d := range devs {
		byIndex[d.Index] = d
	}
	states := make([]proto.GPUState, 0, len(a.gpus))
	for pi, g := range a.gpus {
		d, ok := byIndex[g.Index]
		if !ok {
			continue // gone: checkGPUs reports it
		}
		foreign := a.foreignBytes(d)
		absorbed := g.MemoryTotal - uint64(g.Slots)*g.SlotBytes // reserve and the tail no slot covers
		need := 0
		if foreign > absorbed {
			need = int((foreign - absorbed + g.SlotBytes - 1) / g.SlotBytes)
		}
		a.blockSlots(pi, g, need, foreign)
		st := a.pools[pi].Stats()
		states = append(states, proto.GPUState{
			Index: g.Index, MemoryUsed: d.MemoryUsed, ForeignBytes: foreign, TemperatureC: d.TemperatureC,
			UtilizationPct: d.UtilizationPct, ECCUncorrected: d.ECCUncorrected, MIG: d.MIGEnabled, Fault: d.Fault,
			FreeSlots: st.Free, LargestFreeRun: st.LargestFreeRun, Fragmentation: st.Fragmentation,
		})
	}
	a.healthMu.Lock()
	a.gpuStates = states
	a.healthMu.Unlock()
}

// foreignBytes sums the memory of d's compute processes that are not this
// agent or its descendants (workers, ComfyUI servers, exec jobs).
func (a *Agent) foreignBytes(d gpu.Device) uint64 {
	var n uint64
	for _, p := range d.Processes {
		if !a.manages(p.PID) {
			n += p.UsedBytes
		}
	}
	return n
}

// manages reports whether pid is this process or descends from it, by its
// parent chain in /proc. A pid that cannot be read (gone, another PID
// namespace) counts as foreign: memory the agent cannot account for must
// not be handed out.
func (a *Agent) manages(pid int) bool {
	self := os.Getpid()
	for range 64 {
		if pid == self {
			return true
		}
		if pid <= 1 {
			return false
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		// The command name may hold spaces and parentheses: fields follow
		// the last ')'. The parent is the second of them.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			return false
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			return false
		}
		if pid, err = strconv.Atoi(f[1]); err != nil {
			return false
		}
	}
	return false
}

// blockSlots makes exactly need slots of pool pi blocked, where it can.
func (a *Agent) blockSlots(pi int, g proto.GPU, need int, foreign uint64) {
	var slots []*slot
	for _, sl := range a.slots {
		if sl.gpu == g.Index {
			slots = append(slots, sl)
		}
	}
	blocked := 0
	for _, sl := range slots {
		if sl.isBlocked() {
			blocked++
		}
	}
	why := fmt.Sprintf("%d MiB of GPU %d held by processes hearth does not manage", foreign>>20, g.Index)
	pool := a.pools[pi]
	// Unblock from the lowest slot up, block from the highest down, so a
	// contiguous run stays free at the bottom.
	for i := 0; i < len(slots) && blocked > need; i++ {
		if slots[i].unblock(pool) {
			blocked--
			a.log.Info("slot back in service: foreign GPU memory released", "gpu", g.Index, "slot", slots[i].index)
		}
	}
	for _, idle := range []bool{false, true} { // free slots first, then idle workers
		for i := len(slots) - 1; i >= 0 && blocked < need; i-- {
			if slots[i].block(pool, why, idle) {
				blocked++
				a.log.Warn("slot out of service: its memory is held by a process hearth does not manage",
					"gpu", g.Index, "slot", slots[i].index, "foreign_bytes", foreign)
			}
		}
	}
	for _, sl := range slots {
		sl.setBlockedReason(why)
	}
	if blocked < need {
		a.log.Warn("GPU memory over-committed: foreign processes hold memory of slots that are running jobs",
			"gpu", g.Index, "foreign_bytes", foreign, "slots_short", need-blocked)
	}
}

// GPUStates returns the last reading of each GPU with its pool occupancy.
func (a *Agent) GPUStates() []proto.GPUState {
	a.healthMu.Lock()
	defer a.healthMu.Unlock()
	return append([]proto.GPUState(nil), a.gpuStates...)
}
