package fleetsim

import (
	"container/list"
	"fmt"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/proto"
)

// The simulated hardware: hosts of GPUs cut into slots, each slot's worker
// holding models in VRAM and evicting the least recently used to make
// room, as the agent's worker does; each host's RAM tier (least recently
// used demoted first, as cachefs's RAM tier) and NVMe cache (cachefs's own
// eviction policy, through cachefs.Budget); and the links models travel.

type model struct {
	id     int
	name   string
	digest proto.Digest
	size   int64
}

type simHost struct {
	id    string
	index int
	rack  int
	reg   *proto.Host
	gpus  []*simGPU
	ram   *lruBytes
	disk  *cachefs.Budget
	// diskRead is the host's NVMe read bandwidth, shared by the loads
	// that read from it at once.
	diskRead *shared
	// held is the tier (tRAM or tDisk as in proto order: 1, 2) each model
	// sits in on this host, for peers and for the coordinator's view.
	held map[*model]proto.Tier
	// fetching lists, per model being fetched, what waits for it.
	fetching map[*model][]func(at float64)
	// pool, in a fleet with unlimited VRAM, is what every slot of the
	// host holds: each model any of them loaded (poolOrder in load order).
	pool      map[*model]bool
	poolOrder []*model
}

type simGPU struct {
	host    *simHost
	index   int
	slots   []*simSlot
	compute *shared // jobs running on its slots share it
	// busySince is when it last went from idle to running; busyS adds up
	// the busy time inside the measured window.
	busySince float64
	busyS     float64
}

type simSlot struct {
	host     *simHost
	gpu      *simGPU
	index    int
	cap      int64
	resident []*model // least recently used first
	queue    []*simJob
	current  *simJob // loading or running
	warming  bool    // loading models no job asked for yet
}

func (s *simSlot) holds(m *model) bool {
	if p := s.host.pool; p != nil {
		return p[m]
	}
	for _, r := range s.resident {
		if r == m {
			return true
		}
	}
	return false
}

// load makes s hold models, moving them to the most recent end and
// unloading the least recently used others until they fit, as the
// agent's worker plans a load.
func (s *simSlot) load(models []*model) {
	if p := s.host.pool; p != nil {
		for _, m := range models {
			if !p[m] {
				p[m] = true
				s.host.poolOrder = append(s.host.poolOrder, m)
			}
		}
		return
	}
	kept := s.resident[:0]
	var used, need int64
	for _, r := range s.resident {
		if !contains(models, r) {
			kept = append(kept, r)
			used += r.size
		}
	}
	for _, m := range models {
		need += m.size
	}
	n := 0
	for n < len(kept) && used+need > s.cap {
		used -= kept[n].size
		n++
	}
	s.resident = append(append([]*model(nil), kept[n:]...), models...)
}

// state is the slot as its agent's heartbeat reports it: resident models
// most recently used first.
func (s *simSlot) state() proto.SlotState {
	st := proto.SlotState{GPU: s.gpu.index, Slot: s.index}
	res := s.resident
	if s.host.pool != nil {
		res = s.host.poolOrder
	}
	for i := len(res) - 1; i >= 0; i-- {
		st.Resident = append(st.Resident, res[i].digest)
	}
	return st
}

func contains(ms []*model, m *model) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// lruBytes is a byte budget that drops the least recently used first.
type lruBytes struct {
	max, used int64
	order     *list.List // front: most recent
	items     map[*model]*list.Element
}

func newLRUBytes(max int64) *lruBytes {
	return &lruBytes{max: max, order: list.New(), items: make(map[*model]*list.Element)}
}

func (l *lruBytes) has(m *model) bool { _, ok := l.items[m]; return ok }

func (l *lruBytes) touch(m *model) {
	if e, ok := l.items[m]; ok {
		l.order.MoveToFront(e)
	}
}

// admit adds m, evicting as needed, and returns what it evicted; a model
// larger than the budget is not admitted.
func (l *lruBytes) admit(m *model) (evicted []*model) {
	if l.has(m) {
		l.touch(m)
		return nil
	}
	if m.size > l.max {
		return nil
	}
	for l.used+m.size > l.max {
		e := l.order.Back()
		v := e.Value.(*model)
		l.order.Remove(e)
		delete(l.items, v)
		l.used -= v.size
		evicted = append(evicted, v)
	}
	l.items[m] = l.order.PushFront(m)
	l.used += m.size
	return evicted
}

func hostID(i int) string { return fmt.Sprintf("host-%05d", i) }
