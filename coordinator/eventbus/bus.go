package eventbus

import (
	"errors"
	"sort"
	"sync"
	"sync/atomic"
)

// Event is one job event.
type Event struct {
	// ID is cluster-wide, strictly increasing in publish order and the same
	// on every node: it is derived from the Raft log index, so a client can
	// resume on another node with Last-Event-ID.
	ID    uint64
	Type  string // "state", "progress", "placement", ...
	JobID string
	// Data is one pre-encoded JSON object. The bus keeps it in its ring and
	// hands the same slice to every subscriber, so nobody may modify it
	// after Publish.
	Data []byte
}

// Why a subscription ended (Subscription.Err).
var (
	ErrSlowSubscriber = errors.New("eventbus: subscriber fell behind and was dropped; reconnect with Last-Event-ID to resume")
	ErrClosed         = errors.New("eventbus: bus closed because the node is shutting down; reconnect (to another node) with Last-Event-ID")
)

// Bus fans events out to subscriptions and keeps a ring of recent events
// for replay. It is safe for concurrent use. One mutex orders Publish,
// Subscribe and Close: that is what makes replay-then-live gapless, and
// every operation under it is O(subscribers of the event) or O(events
// replayed), never a wait on a subscriber.
type Bus struct {
	last atomic.Uint64 // ID of the newest event; written under mu, read anywhere

	mu   sync.Mutex
	ring []slot
	// n counts the events ever stored; event number k (from 0) lives in
	// ring[k%len(ring)], and those from max(n-len(ring), 0) on are held.
	n uint64
	// floor: every event with ID > floor is in the ring or still to come.
	// It is the newest evicted ID, or, before the first eviction, just
	// below the first ID this bus saw (it cannot vouch for anything older:
	// the node may have started from a snapshot).
	floor  uint64
	jobs   map[string]*job
	all    subList // subscriptions to every job
	closed bool
}

// slot is one ring entry. prev chains each job's events together so that a
// job-filtered Subscribe replays in O(the job's events), not by scanning
// the whole ring under the lock Publish needs.
type slot struct {
	ev   Event
	prev uint64 // k+1 of the same job's previous event; 0 if none
}

// job is what the bus tracks per job id: its subscriptions and its newest
// event in the ring. An entry lives while either is set, so the map stays
// bounded by ring size plus subscriptions.
type job struct {
	subs subList
	tail uint64 // k+1 of the job's newest event in the ring; 0 if none
}

// New returns a bus that keeps the last ringSize events (at least 1) for
// replay.
func New(ringSize int) *Bus {
	return &Bus{ring: make([]slot, max(ringSize, 1)), jobs: make(map[string]*job)}
}

// LastID returns the ID of the newest published event, 0 if none.
func (b *Bus) LastID() uint64 { return b.last.Load() }

// Publish stores evs in the ring and hands each to the subscriptions that
// want it, in order. It never blocks on a subscriber: one whose channel is
// full is dropped (ErrSlowSubscriber).
//
// IDs must increase: an event whose ID is not greater than LastID (a
// programming error, such as publishing an entry's events twice) is
// dropped, silently and without panicking, because failing here would fail
// the Raft apply path. Publish after Close does nothing.
func (b *Bus) Publish(evs ...Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	for _, ev := range evs {
		if ev.ID <= b.last.Load() {
			continue
		}
		j := b.store(ev)
		b.deliver(&j.subs, ev)
		b.deliver(&b.all, ev)
	}
}

// store appends ev to the ring, evicting the oldest event if it is full,
// and returns ev's job entry. b.mu is held.
func (b *Bus) store(ev Event) *job {
	size := uint64(len(b.ring))
	k := b.n
	if k == 0 {
		b.floor = ev.ID - 1
	}
	if k >= size {
		old := &b.ring[k%size].ev
		b.floor = old.ID
		if oj := b.jobs[old.JobID]; oj.tail == k-size+1 {
			oj.tail = 0
			if len(oj.subs) == 0 {
				delete(b.jobs, old.JobID)
			}
		}
	}
	j := b.jobs[ev.JobID]
	if j == nil {
		j = &job{}
		b.jobs[ev.JobID] = j
	}
	b.ring[k%size] = slot{ev: ev, prev: j.tail}
	j.tail = k + 1
	b.n++
	b.last.Store(ev.ID)
	return j
}

// deliver sends ev to every subscription in l without blocking, dropping
// those that are full. b.mu is held.
func (b *Bus) deliver(l *subList, ev Event) {
	// Backwards, because dropping one moves the last (already visited)
	// into its place.
	for i := len(*l) - 1; i >= 0; i-- {
		s := (*l)[i]
		if ev.ID <= s.after {
			continue // the client already has it (it resumed ahead of this node)
		}
		select {
		case s.ch <- ev:
		default:
			b.end(s, ErrSlowSubscriber)
		}
	}
}

// Subscribe returns a subscription to jobID's events ("" for every job).
// Its channel first replays the ring's events with ID > after that match,
// then carries live events; events with ID <= after are never delivered,
// even live ones (a client may resume on a node that is behind the one it
// left). The channel has room for the whole replay plus buf (at least 1)
// live events; a subscriber that lets it fill is dropped.
func (b *Bus) Subscribe(jobID string, after uint64, buf int) *Subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &Subscription{b: b, jobID: jobID, after: after, since: b.last.Load()}
	s.gap = after != 0 && (b.n == 0 || after < b.floor)
	if b.closed {
		s.ch = make(chan Event)
		s.done, s.err = true, ErrClosed
		close(s.ch)
		return s
	}
	buf = max(buf, 1)
	size := uint64(len(b.ring))
	oldest := b.n - min(b.n, size)
	if jobID == "" {
		// Ids increase around the ring, so the replay starts where a
		// binary search says.
		start := oldest + uint64(sort.Search(int(b.n-oldest), func(i int) bool {
			return b.ring[(oldest+uint64(i))%size].ev.ID > after
		}))
		s.ch = make(chan Event, int(b.n-start)+buf)
		for k := start; k < b.n; k++ {
			s.ch <- b.ring[k%size].ev
		}
		b.all.add(s)
		return s
	}
	j := b.jobs[jobID]
	if j == nil {
		j = &job{}
		b.jobs[jobID] = j
	}
	var replay []Event // newest first
	for p := j.tail; p != 0 && p-1 >= oldest; {
		sl := &b.ring[(p-1)%size]
		if sl.ev.ID <= after {
			break
		}
		replay = append(replay, sl.ev)
		p = sl.prev
	}
	s.ch = make(chan Event, len(replay)+buf)
	for i := len(replay) - 1; i >= 0; i-- {
		s.ch <- replay[i]
	}
	j.subs.add(s)
	return s
}

// end unregisters s and closes its channel; the first reason sticks.
// b.mu is held.
func (b *Bus) end(s *Subscription, err error) {
	if s.done {
		return
	}
	s.done, s.err = true, err
	if s.jobID == "" {
		b.all.remove(s)
	} else {
		j := b.jobs[s.jobID]
		j.subs.remove(s)
		if len(j.subs) == 0 && j.tail == 0 {
			delete(b.jobs, s.jobID)
		}
	}
	close(s.ch)
}

// Close ends every subscription with ErrClosed; later subscriptions start
// ended and later publishes are ignored. It is idempotent.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for i := len(b.all) - 1; i >= 0; i-- {
		b.end(b.all[i], ErrClosed)
	}
	for _, j := range b.jobs {
		for i := len(j.subs) - 1; i >= 0; i-- {
			b.end(j.subs[i], ErrClosed)
		}
	}
}

// Subscription is one subscriber's view of the bus (see Bus.Subscribe).
type Subscription struct {
	b     *Bus
	jobID string
	after uint64
	since uint64
	gap   bool
	ch    chan Event

	// Guarded by b.mu.
	idx  int // position in its subList
	done bool
	err  error
}

// C delivers the replay, then live events, in ID order. It is closed when
// the subscription ends; events already in it can still be read.
func (s *Subscription) C() <-chan Event { return s.ch }

// Gap reports that after was not 0 and this node cannot replay every
// event after it: they have left the ring, or predate the first event
// this node published. The caller must resync from the replicated state;
// C still carries what the ring held and everything live.
func (s *Subscription) Gap() bool { return s.gap }

// Since is LastID at the moment of subscribing: every event with
// ID <= Since was replayed or is older than the ring, every later event
// comes live.
func (s *Subscription) Since() uint64 { return s.since }

// Err says why C was closed: nil while it is open or after Close,
// ErrSlowSubscriber if its buffer overflowed, ErrClosed if the bus closed.
func (s *Subscription) Err() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.err
}

// Close ends the subscription and closes C. It is idempotent, safe
// concurrently with Publish, and keeps an earlier reason for Err.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.end(s, nil)
}

// subList is a set of subscriptions with O(1) add and remove; each
// subscription knows its index.
type subList []*Subscription

func (l *subList) add(s *Subscription) {
	s.idx = len(*l)
	*l = append(*l, s)
}

func (l *subList) remove(s *Subscription) {
	last := len(*l) - 1
	m := (*l)[last]
	(*l)[s.idx], m.idx = m, s.idx
	(*l)[last] = nil
	*l = (*l)[:last]
}
