package eventbus

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

func ev(id uint64, job string) Event {
	return Event{ID: id, Type: "state", JobID: job, Data: fmt.Appendf(nil, `{"n":%d}`, id)}
}

// drain reads what is buffered in s.C without waiting.
func drain(s *Subscription) []uint64 {
	var ids []uint64
	for {
		select {
		case e, ok := <-s.C():
			if !ok {
				return ids
			}
			ids = append(ids, e.ID)
		default:
			return ids
		}
	}
}

// closed reports whether s.C is closed once its buffered events are read.
func closed(s *Subscription) bool {
	drain(s)
	select {
	case _, ok := <-s.C():
		return !ok
	default:
		return false
	}
}

// TestReplayThenLiveNoGap has 8 goroutines subscribe, again and again, at
// random points of a 100k-event publish with random `after`s (inside the
// ring, off it, at 0 and ahead of the bus) and close at random points:
// every subscription sees a contiguous, ordered, duplicate-free run from
// where it should start, across the switch from replay to live.
func TestReplayThenLiveNoGap(t *testing.T) {
	const (
		total = 100_000
		step  = 3 // sparse ids, like the FSM's
		ring  = 4096
		final = uint64(total * step)
	)
	b := New(ring)
	// Once published is closed, everything a subscription will ever get
	// is in its channel (Publish delivers synchronously), so a receive
	// that would block means events were lost: fail instead of hanging.
	published := make(chan struct{})
	var straddled atomic.Int64 // subscriptions that got both replay and live events
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for round := range 5 {
				target := uint64(r.IntN(total)) * step
				for b.LastID() < target {
					runtime.Gosched()
				}
				last := b.LastID()
				var after uint64
				switch r.IntN(5) {
				case 0: // from the start
				case 1: // off the ring
					after = last - min(last, uint64(ring+r.IntN(ring))*step)
				case 2: // ahead of this node
					after = last + uint64(r.IntN(10))*step
				default: // a recent one
					after = last - min(last, uint64(r.IntN(ring/2))*step)
				}
				s := b.Subscribe("", after, total)
				want := after + step // the first id expected
				if after == 0 || s.Gap() {
					want = 0 // the ring's oldest, whatever it is by now
				}
				stopAt := final
				if round < 4 {
					stopAt = min(final, after+uint64(1+r.IntN(2*ring))*step)
				}
				if after >= final {
					s.Close() // nothing will come
				}
				recv := func() (Event, bool) {
					select {
					case e, ok := <-s.C():
						return e, ok
					case <-published:
					}
					select {
					case e, ok := <-s.C():
						return e, ok
					default:
						t.Errorf("w%d: after %d: stuck after all was published", w, after)
						return Event{}, false
					}
				}
				var prev uint64
				for e, ok := recv(); ok; e, ok = recv() {
					if prev == 0 && e.ID <= s.Since() && s.Since() < final {
						straddled.Add(1)
					}
					switch {
					case e.ID <= after:
						t.Errorf("w%d: after %d: got %d", w, after, e.ID)
						return
					case prev == 0 && want != 0 && e.ID != want:
						t.Errorf("w%d: after %d (LastID %d), first event %d, want %d", w, after, last, e.ID, want)
						return
					case prev != 0 && e.ID != prev+step:
						t.Errorf("w%d: after %d: event %d follows %d", w, after, e.ID, prev)
						return
					}
					prev = e.ID
					if e.ID >= stopAt {
						s.Close() // what is buffered still arrives, in order
					}
				}
				if after < final && prev < stopAt {
					t.Errorf("w%d: after %d: ended at %d before %d: %v", w, after, prev, stopAt, s.Err())
				}
				if s.Err() != nil {
					t.Errorf("w%d: Err after Close = %v", w, s.Err())
				}
			}
		})
	}
	// Batches of random size, as entries with several events arrive.
	r := rand.New(rand.NewPCG(7, 7))
	for id := uint64(step); id <= final; {
		batch := make([]Event, 0, 8)
		for range 1 + r.IntN(8) {
			if id <= final {
				batch = append(batch, ev(id, "j"))
				id += step
			}
		}
		b.Publish(batch...)
	}
	close(published)
	wg.Wait()
	t.Logf("%d of 40 subscriptions switched from replay to live", straddled.Load())
}

// TestGap checks Gap and Since against a sparse id sequence.
func TestGap(t *testing.T) {
	b := New(4)
	if s := b.Subscribe("", 5, 1); !s.Gap() {
		t.Error("a bus with no events vouched for events after 5")
	}
	if s := b.Subscribe("", 0, 1); s.Gap() || s.Since() != 0 {
		t.Errorf("after 0 on an empty bus: gap %v since %d", s.Gap(), s.Since())
	}
	b.Publish(ev(10, "a"))
	for after, gap := range map[uint64]bool{0: false, 5: true, 8: true, 9: false, 10: false, 99: false} {
		if s := b.Subscribe("", after, 1); s.Gap() != gap {
			t.Errorf("first event 10, after %d: gap %v, want %v (a node started from a snapshot cannot vouch for older events)", after, s.Gap(), gap)
		}
	}
	for id := uint64(20); id <= 100; id += 10 {
		b.Publish(ev(id, "a"))
	}
	// The ring holds 70..100; 60 was the last to leave.
	for after, want := range map[uint64][]uint64{
		0:   {70, 80, 90, 100},
		50:  {70, 80, 90, 100},
		59:  {70, 80, 90, 100},
		60:  {70, 80, 90, 100},
		65:  {70, 80, 90, 100},
		80:  {90, 100},
		100: nil,
		150: nil,
	} {
		s := b.Subscribe("", after, 1)
		if got := drain(s); !slices.Equal(got, want) {
			t.Errorf("after %d: replayed %v, want %v", after, got, want)
		}
		if gap := after != 0 && after < 60; s.Gap() != gap {
			t.Errorf("after %d: gap %v, want %v", after, s.Gap(), gap)
		}
		if s.Since() != 100 {
			t.Errorf("after %d: since %d, want 100", after, s.Since())
		}
	}
	// A client ahead of this node does not get again what it has.
	ahead := b.Subscribe("", 120, 10)
	b.Publish(ev(110, "a"), ev(120, "a"), ev(130, "a"))
	if got := drain(ahead); !slices.Equal(got, []uint64{130}) {
		t.Errorf("subscribed after 120 at 100: got %v, want [130]", got)
	}
}

func TestJobFilter(t *testing.T) {
	b := New(8)
	// Ring after this: 3..10, jobs alternating a (odd) and b (even).
	for id := uint64(1); id <= 10; id++ {
		b.Publish(ev(id, string(rune('a'+1-id%2))))
	}
	a := b.Subscribe("a", 0, 1)
	if got := drain(a); !slices.Equal(got, []uint64{3, 5, 7, 9}) {
		t.Fatalf("job a replay: %v", got)
	}
	if got := drain(b.Subscribe("b", 6, 1)); !slices.Equal(got, []uint64{8, 10}) {
		t.Fatalf("job b replay after 6: %v", got)
	}
	if got := drain(b.Subscribe("c", 0, 1)); got != nil {
		t.Fatalf("job c replay: %v", got)
	}
	// A buffer of 1 is not used up by other jobs' events.
	for id := uint64(11); id <= 1000; id++ {
		b.Publish(ev(id, "other"))
	}
	b.Publish(ev(1001, "a"))
	if got := drain(a); !slices.Equal(got, []uint64{1001}) || a.Err() != nil {
		t.Fatalf("job a live: %v, err %v", got, a.Err())
	}
	// Job a's older events have all left the ring.
	if got := drain(b.Subscribe("a", 0, 1)); !slices.Equal(got, []uint64{1001}) {
		t.Fatalf("job a replay after eviction: %v", got)
	}
}

// TestReplayMatchesModel compares every replay and Gap with a brute-force
// model over random publishes, job ids, ring sizes and subscriptions.
func TestReplayMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		size := 1 + r.IntN(20)
		b := New(size)
		var published []Event
		var subs []*Subscription
		var id uint64
		for range 200 {
			if r.IntN(3) > 0 {
				id += 1 + uint64(r.IntN(3))
				e := ev(id, fmt.Sprint("j", r.IntN(4)))
				published = append(published, e)
				b.Publish(e)
				continue
			}
			job := ""
			if r.IntN(2) == 0 {
				job = fmt.Sprint("j", r.IntN(5))
			}
			after := uint64(r.IntN(int(id) + 3))
			s := b.Subscribe(job, after, 1)
			held := published[len(published)-min(len(published), size):]
			var want []uint64
			for _, e := range held {
				if e.ID > after && (job == "" || e.JobID == job) {
					want = append(want, e.ID)
				}
			}
			if got := drain(s); !slices.Equal(got, want) {
				t.Fatalf("ring %d, %d published, Subscribe(%q, %d): replayed %v, want %v", size, len(published), job, after, got, want)
			}
			gap := after != 0 && (len(held) == 0 || after < held[0].ID-1)
			if len(published) > size {
				gap = after != 0 && after < published[len(published)-size-1].ID
			}
			if s.Gap() != gap {
				t.Fatalf("ring %d, %d published, after %d: gap %v, want %v", size, len(published), after, s.Gap(), gap)
			}
			subs = append(subs, s)
			if r.IntN(2) == 0 {
				subs[r.IntN(len(subs))].Close()
			}
		}
	}
}

// TestJobsForgotten checks that the per-job index forgets jobs that have
// left the ring and have no subscribers, so it stays bounded however many
// jobs a long-lived node sees.
func TestJobsForgotten(t *testing.T) {
	b := New(8)
	var subs []*Subscription
	for id := uint64(1); id <= 10_000; id++ {
		// Watched while its event leaves the ring, and not watched.
		subs = append(subs, b.Subscribe(fmt.Sprint("job", id), 0, 1))
		b.Publish(ev(2*id-1, fmt.Sprint("job", id)), ev(2*id, fmt.Sprint("unwatched", id)))
	}
	for _, s := range subs {
		s.Close()
	}
	b.mu.Lock()
	n := len(b.jobs)
	b.mu.Unlock()
	if n != 8 {
		t.Fatalf("bus tracks %d jobs, want the 8 in its ring", n)
	}
}

func TestOutOfOrderDropped(t *testing.T) {
	b := New(16)
	s := b.Subscribe("", 0, 10)
	b.Publish(ev(5, "j"), ev(3, "j"), ev(5, "j"), ev(7, "j"), ev(0, "j"))
	b.Publish(ev(6, "j"))
	if got := drain(s); !slices.Equal(got, []uint64{5, 7}) || b.LastID() != 7 {
		t.Fatalf("got %v, LastID %d; want [5 7], 7", got, b.LastID())
	}
	if got := drain(b.Subscribe("", 0, 1)); !slices.Equal(got, []uint64{5, 7}) {
		t.Fatalf("ring holds %v", got)
	}
}

func TestSlowSubscriberDropped(t *testing.T) {
	b := New(16)
	b.Publish(ev(1, "j"))
	slow := b.Subscribe("", 0, 2)     // replay 1 + room for 2
	slowJob := b.Subscribe("j", 0, 1) // replay 1 + room for 1
	fast := b.Subscribe("", 0, 100)
	other := b.Subscribe("other", 0, 1)
	// If Publish blocked on a full subscriber, this would hang.
	for id := uint64(2); id <= 10; id++ {
		b.Publish(ev(id, "j"))
	}
	if got := drain(slow); !slices.Equal(got, []uint64{1, 2, 3}) || !closed(slow) || !errors.Is(slow.Err(), ErrSlowSubscriber) {
		t.Fatalf("slow: got %v, err %v", got, slow.Err())
	}
	if got := drain(slowJob); !slices.Equal(got, []uint64{1, 2}) || !closed(slowJob) || !errors.Is(slowJob.Err(), ErrSlowSubscriber) {
		t.Fatalf("slow job subscriber: got %v, err %v", got, slowJob.Err())
	}
	if got := drain(fast); len(got) != 10 || fast.Err() != nil {
		t.Fatalf("fast: got %v, err %v", got, fast.Err())
	}
	b.Publish(ev(11, "j"), ev(12, "other"))
	if got := drain(fast); !slices.Equal(got, []uint64{11, 12}) {
		t.Fatalf("fast after the drops: got %v", got)
	}
	if got := drain(other); !slices.Equal(got, []uint64{12}) || other.Err() != nil {
		t.Fatalf("other job: got %v, err %v", got, other.Err())
	}
	slow.Close()
	if !errors.Is(slow.Err(), ErrSlowSubscriber) {
		t.Fatalf("Close replaced the drop reason: %v", slow.Err())
	}
}

func TestSubscriptionClose(t *testing.T) {
	b := New(16)
	s := b.Subscribe("j", 0, 1)
	s.Close()
	s.Close()
	if !closed(s) || s.Err() != nil {
		t.Fatalf("closed %v, err %v", closed(s), s.Err())
	}
	b.Publish(ev(1, "j")) // to nobody, without panicking on the closed channel

	// Closes racing publishes and each other.
	var wg sync.WaitGroup
	wg.Go(func() {
		for id := uint64(2); id < 20_000; id++ {
			b.Publish(ev(id, fmt.Sprint("j", id%4)))
		}
	})
	for w := range 8 {
		wg.Go(func() {
			for i := range 500 {
				s := b.Subscribe(fmt.Sprint("j", (w+i)%5), 0, 4)
				if i%2 == 0 {
					s = b.Subscribe("", b.LastID(), 4)
				}
				wg.Go(s.Close)
				s.Close()
			}
		})
	}
	wg.Wait()
}

func TestBusClose(t *testing.T) {
	b := New(16)
	b.Publish(ev(1, "j"))
	all := b.Subscribe("", 0, 4)
	job := b.Subscribe("j", 0, 4)
	gone := b.Subscribe("j", 0, 4)
	gone.Close()
	b.Close()
	b.Close()
	for _, s := range []*Subscription{all, job} {
		if got := drain(s); !slices.Equal(got, []uint64{1}) || !closed(s) || !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("after bus Close: got %v, err %v", got, s.Err())
		}
		s.Close()
		if !errors.Is(s.Err(), ErrClosed) {
			t.Fatalf("Close after the bus closed replaced ErrClosed: %v", s.Err())
		}
	}
	if gone.Err() != nil {
		t.Fatalf("a subscription closed before the bus: %v", gone.Err())
	}
	late := b.Subscribe("", 0, 4)
	if !closed(late) || !errors.Is(late.Err(), ErrClosed) {
		t.Fatalf("Subscribe after Close: err %v", late.Err())
	}
	b.Publish(ev(2, "j"))
	if b.LastID() != 1 {
		t.Fatalf("Publish after Close moved LastID to %d", b.LastID())
	}
}
