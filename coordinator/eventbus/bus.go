// Package eventbus fans job events out to Server-Sent Event streams on one
// coordinator node.
//
// Ids. An event's ID is cluster-wide and strictly increasing: the FSM
// derives it from the Raft log index, so every node publishes the same
// events with the same ids and a client can resume on any node with
// Last-Event-ID. The bus keeps a ring of recent events for such resumes.
//
// Slow subscribers. Publish runs on the Raft apply path and never blocks:
// a subscriber whose buffer is full is dropped (its channel closed, Err
// ErrSlowSubscriber), and the client resumes from its last id.
package eventbus

import (
	"errors"
	"sync"
)

// Event is one job event; Data is one pre-encoded JSON object.
type Event struct {
	ID    uint64
	Type  string
	JobID string
	Data  []byte
}

// Why a subscription ended.
var (
	ErrSlowSubscriber = errors.New("eventbus: subscriber fell behind and was dropped; resume with Last-Event-ID")
	ErrClosed         = errors.New("eventbus: closed")
)

// Bus is safe for concurrent use.
type Bus struct {
	mu      sync.Mutex
	ring    []Event // circular, ring[next] is the oldest once full
	next    int
	full    bool
	last    uint64
	evicted uint64 // id of the newest event that left the ring
	byJob   map[string]map[*Subscription]struct{}
	all     map[*Subscription]struct{}
	closed  bool
}

// Subscription receives events in id order.
type Subscription struct {
	b     *Bus
	jobID string
	ch    chan Event
	since uint64
	gap   bool
	err   error
	done  bool
}

// New returns a bus that keeps the last ringSize events for replay.
func New(ringSize int) *Bus {
	return &Bus{ring: make([]Event, max(ringSize, 1)), byJob: make(map[string]map[*Subscription]struct{}), all: make(map[*Subscription]struct{})}
}

// LastID returns the id of the last published event.
func (b *Bus) LastID() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// Publish delivers evs to subscribers. Events whose id is not above the
// last published one are dropped: ids come from the log, so that only
// happens if a caller republishes.
func (b *Bus) Publish(evs ...Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	for _, ev := range evs {
		if ev.ID <= b.last {
			continue
		}
		b.last = ev.ID
		if b.full {
			b.evicted = b.ring[b.next].ID
		}
		b.ring[b.next] = ev
		b.next = (b.next + 1) % len(b.ring)
		if b.next == 0 {
			b.full = true
		}
		for s := range b.byJob[ev.JobID] {
			b.deliver(s, ev)
		}
		for s := range b.all {
			b.deliver(s, ev)
		}
	}
}

// deliver sends without blocking, dropping the subscriber if it is full.
// b.mu is held.
func (b *Bus) deliver(s *Subscription, ev Event) {
	select {
	case s.ch <- ev:
	default:
		b.end(s, ErrSlowSubscriber)
	}
}

// end removes s and closes its channel. b.mu is held.
func (b *Bus) end(s *Subscription, err error) {
	if s.done {
		return
	}
	s.done, s.err = true, err
	if s.jobID == "" {
		delete(b.all, s)
	} else if m := b.byJob[s.jobID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(b.byJob, s.jobID)
		}
	}
	close(s.ch)
}

// Subscribe returns a subscription to jobID's events ("" for every job):
// first the ring's events after `after` that match, then live ones, with
// room for buf live events not yet read.
func (b *Bus) Subscribe(jobID string, after uint64, buf int) *Subscription {
	b.mu.Lock()
	defer b.mu.Unlock()
	var replay []Event
	n := b.next
	if b.full {
		n = len(b.ring)
	}
	for i := range n {
		ev := b.ring[(b.next-n+i+len(b.ring))%len(b.ring)]
		if ev.ID > after && (jobID == "" || ev.JobID == jobID) {
			replay = append(replay, ev)
		}
	}
	s := &Subscription{b: b, jobID: jobID, ch: make(chan Event, len(replay)+max(buf, 1)), since: b.last}
	// A gap: an event after `after` has already left the ring. (Ids are
	// sparse, so this is judged by the newest evicted id, not by counting.)
	s.gap = after != 0 && after < b.evicted
	for _, ev := range replay {
		s.ch <- ev
	}
	if b.closed {
		s.done, s.err = true, ErrClosed
		close(s.ch)
		return s
	}
	if jobID == "" {
		b.all[s] = struct{}{}
	} else {
		m := b.byJob[jobID]
		if m == nil {
			m = make(map[*Subscription]struct{})
			b.byJob[jobID] = m
		}
		m[s] = struct{}{}
	}
	return s
}

// Close ends every subscription.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for s := range b.all {
		b.end(s, ErrClosed)
	}
	for _, m := range b.byJob {
		for s := range m {
			b.end(s, ErrClosed)
		}
	}
}

// C delivers the events; it is closed when the subscription ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Gap reports that events after the subscriber's `after` had already left
// the ring: the caller must resync from the state.
func (s *Subscription) Gap() bool { return s.gap }

// Since is the bus's last id when the subscription began.
func (s *Subscription) Since() uint64 { return s.since }

// Err says why C was closed: nil after Close, ErrSlowSubscriber or
// ErrClosed.
func (s *Subscription) Err() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.err
}

// Close ends the subscription; it is idempotent.
func (s *Subscription) Close() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.end(s, nil)
}
