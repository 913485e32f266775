package cachefs

import (
	"container/heap"

	"github.com/hearth-gpu/hearth/proto"
)

// GDSF was measured and not chosen (see policy_s3fifo.go): it misses the
// fewest bytes while popularity holds still, but its use counts outlive
// the popularity they measured, so when new models take over it does worse
// than LRU.

// gdsf is GreedyDual-Size-Frequency: a blob's priority is
//
//	H = L + uses × cost/size
//
// and the lowest H goes first. L, the clock, rises to the H of each evicted
// blob, so a blob used often long ago sinks below one used a little lately.
// uses counts the blob's uses since it was last admitted.
type gdsf struct {
	cost   func(size int64) float64 // what fetching the blob again costs
	clock  float64                  // L: the H of the last evicted blob
	seq    uint64                   // orders equal priorities: older use first
	h      gdsfHeap
	items  map[proto.Digest]*gdsfItem
	chosen map[proto.Digest]bool // the last victims returned
}

// bytesCost makes cost/size 1, so H = L + uses: LFU with dynamic aging.
// Refetching a blob costs its bytes, and a blob holds as many bytes of
// cache as it saves per use, so per byte held only the use count matters.
// This is what minimises bytes fetched.
func bytesCost(size int64) float64 { return float64(size) }

// fetchTimeCost is the time to fetch a blob: a fixed setup, counted here as
// the bytes the link would have moved meanwhile, plus the bytes. It favours
// small blobs a little, trading bytes for fewer fetches.
func fetchTimeCost(setupBytes int64) func(int64) float64 {
	return func(size int64) float64 { return float64(setupBytes + size) }
}

type gdsfItem struct {
	d     proto.Digest
	size  int64
	uses  int
	prio  float64
	seq   uint64
	index int
}

func newGDSF(cost func(int64) float64) *gdsf {
	return &gdsf{cost: cost, items: make(map[proto.Digest]*gdsfItem)}
}

func (p *gdsf) admit(d proto.Digest, size int64) {
	if _, ok := p.items[d]; ok {
		p.access(d)
		return
	}
	it := &gdsfItem{d: d, size: size}
	p.items[d] = it
	p.use(it)
	heap.Push(&p.h, it)
}

func (p *gdsf) access(d proto.Digest) {
	if it, ok := p.items[d]; ok {
		p.use(it)
		heap.Fix(&p.h, it.index)
	}
}

func (p *gdsf) use(it *gdsfItem) {
	it.uses++
	// An empty blob costs nothing to hold; give it the highest weight.
	w := p.cost(it.size) / float64(max(it.size, 1))
	it.prio = p.clock + float64(it.uses)*w
	p.seq++
	it.seq = p.seq
}

func (p *gdsf) remove(d proto.Digest) {
	it, ok := p.items[d]
	if !ok {
		return
	}
	heap.Remove(&p.h, it.index)
	delete(p.items, d)
	if p.chosen[d] {
		delete(p.chosen, d)
		p.clock = max(p.clock, it.prio)
	}
}

func (p *gdsf) victims(need int64, pinned func(proto.Digest) bool) []proto.Digest {
	clear(p.chosen)
	if p.chosen == nil {
		p.chosen = make(map[proto.Digest]bool)
	}
	var out []proto.Digest
	var popped []*gdsfItem
	var freed int64
	for freed < need && p.h.Len() > 0 {
		it := heap.Pop(&p.h).(*gdsfItem)
		popped = append(popped, it)
		if pinned(it.d) {
			continue
		}
		out = append(out, it.d)
		p.chosen[it.d] = true
		freed += it.size
	}
	for _, it := range popped {
		heap.Push(&p.h, it)
	}
	return out
}

// gdsfHeap is a min-heap on (prio, seq).
type gdsfHeap []*gdsfItem

func (h gdsfHeap) Len() int { return len(h) }

func (h gdsfHeap) Less(i, j int) bool {
	if h[i].prio != h[j].prio {
		return h[i].prio < h[j].prio
	}
	return h[i].seq < h[j].seq
}

func (h gdsfHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *gdsfHeap) Push(x any) {
	it := x.(*gdsfItem)
	it.index = len(*h)
	*h = append(*h, it)
}

func (h *gdsfHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}
