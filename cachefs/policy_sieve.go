package cachefs

import (
	"container/list"

	"github.com/hearth-gpu/hearth/proto"
)

// sieve is SIEVE (Zhang et al., NSDI 2024) counted in bytes: one FIFO with
// a visited bit per blob and a hand that walks from the oldest blob toward
// the newest. A visited blob the hand passes loses its bit and stays where
// it is; the first unvisited one is evicted. The hand keeps its place
// between evictions and wraps to the oldest blob at the head. Sizes enter
// only through need: the hand evicts until the bytes are covered.
type sieve struct {
	q      *list.List // of *sieveItem, newest at the front
	hand   *list.Element
	items  map[proto.Digest]*list.Element
	chosen []*sieveItem // the last victims returned
}

type sieveItem struct {
	d       proto.Digest
	size    int64
	visited bool
	chosen  bool
}

func newSIEVE() *sieve {
	return &sieve{q: list.New(), items: make(map[proto.Digest]*list.Element)}
}

func (p *sieve) admit(d proto.Digest, size int64) {
	if _, ok := p.items[d]; ok {
		p.access(d)
		return
	}
	p.items[d] = p.q.PushFront(&sieveItem{d: d, size: size})
}

func (p *sieve) access(d proto.Digest) {
	if e, ok := p.items[d]; ok {
		e.Value.(*sieveItem).visited = true
	}
}

func (p *sieve) remove(d proto.Digest) {
	e, ok := p.items[d]
	if !ok {
		return
	}
	if p.hand == e {
		p.hand = e.Prev()
	}
	p.q.Remove(e)
	delete(p.items, d)
}

func (p *sieve) victims(need int64, pinned func(proto.Digest) bool) []proto.Digest {
	for _, it := range p.chosen {
		it.chosen = false
	}
	p.chosen = p.chosen[:0]
	w := &walker{q: p.q, at: p.hand}
	judge := func(e *list.Element) verdict {
		it := e.Value.(*sieveItem)
		switch {
		case it.chosen || pinned(it.d):
			return pass
		case it.visited:
			it.visited = false
			return spare
		}
		return take
	}
	var out []proto.Digest
	var freed int64
	for freed < need {
		e := w.next(judge)
		if e == nil {
			break
		}
		it := e.Value.(*sieveItem)
		it.chosen = true
		p.chosen = append(p.chosen, it)
		out = append(out, it.d)
		freed += it.size
	}
	p.hand = w.at
	return out
}
