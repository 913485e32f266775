package fleetsim

import "container/heap"

// events is the simulation's agenda: functions due at a simulated time,
// run in time order and, at equal times, in the order they were added, so
// a run is the same every time.
type events struct {
	h   eventHeap
	seq uint64
}

type event struct {
	at  float64
	seq uint64
	fn  func(at float64)
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	return h[i].at < h[j].at || h[i].at == h[j].at && h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (q *events) at(t float64, fn func(at float64)) {
	q.seq++
	heap.Push(&q.h, event{at: t, seq: q.seq, fn: fn})
}

// next pops the earliest event; ok is false when none is left.
func (q *events) next() (event, bool) {
	if len(q.h) == 0 {
		return event{}, false
	}
	return heap.Pop(&q.h).(event), true
}

// shared is a resource its active flows share equally, each at most
// perFlow: a GPU's compute (jobs running on its slots), a host's disk, the
// origin's bandwidth. All flows progress at the same rate, so the next to
// finish is the one with the least work left; each change of the flow set
// advances every flow to now and plans the next completion anew, and a
// planned completion that a later change superseded is ignored.
type shared struct {
	total, perFlow float64
	flows          []*flow
	last           float64
	version        uint64
	q              *events
}

type flow struct {
	left float64 // work still to do: bytes, or seconds of a whole GPU
	done func(at float64)
}

func newShared(q *events, total, perFlow float64) *shared {
	return &shared{total: total, perFlow: perFlow, q: q}
}

func (s *shared) rate() float64 {
	if len(s.flows) == 0 {
		return 0
	}
	r := s.total / float64(len(s.flows))
	if s.perFlow > 0 && r > s.perFlow {
		r = s.perFlow
	}
	return r
}

func (s *shared) advance(t float64) {
	if r := s.rate(); r > 0 {
		for _, f := range s.flows {
			f.left -= (t - s.last) * r
		}
	}
	s.last = t
}

// start adds work that calls done when it has all been served.
func (s *shared) start(t, work float64, done func(at float64)) {
	s.advance(t)
	s.flows = append(s.flows, &flow{left: work, done: done})
	s.plan(t)
}

func (s *shared) plan(t float64) {
	s.version++
	if len(s.flows) == 0 {
		return
	}
	least := s.flows[0].left
	for _, f := range s.flows[1:] {
		least = min(least, f.left)
	}
	v := s.version
	s.q.at(t+max(least, 0)/s.rate(), func(at float64) {
		if v != s.version {
			return
		}
		s.advance(at)
		// Done means less than a nanosecond of work left at this rate,
		// so rounding can never plan an event that makes no progress.
		eps := s.rate() * 1e-9
		var finished []*flow
		kept := s.flows[:0]
		for _, f := range s.flows {
			if f.left <= eps {
				finished = append(finished, f)
			} else {
				kept = append(kept, f)
			}
		}
		s.flows = kept
		s.plan(at)
		for _, f := range finished {
			f.done(at)
		}
	})
}

func (s *shared) active() int { return len(s.flows) }
