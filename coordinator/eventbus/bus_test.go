package eventbus

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func ev(id uint64, job string) Event {
	return Event{ID: id, Type: "state", JobID: job, Data: []byte(fmt.Sprintf(`{"n":%d}`, id))}
}

// TestReplayThenLiveNoGap subscribes at random points during a stream of
// publishes: every subscriber sees a contiguous, ordered run from its
// starting point, with nothing lost or repeated between replay and live.
func TestReplayThenLiveNoGap(t *testing.T) {
	const total = 100_000
	b := New(4096)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range r.IntN(50) {
				b.LastID() // let the publisher move on a little
			}
			last := b.LastID()
			after := uint64(0)
			if last > 0 {
				after = last - uint64(r.IntN(int(min(last, 1000))))
			}
			s := b.Subscribe("", after, total)
			defer s.Close()
			want := after + 1
			if after == 0 {
				want = 1
			}
			for e := range s.C() {
				if e.ID != want {
					t.Errorf("subscriber %d (after %d): got id %d, want %d", w, after, e.ID, want)
					return
				}
				if want++; want > total {
					return
				}
			}
			t.Errorf("subscriber %d ended early: %v", w, s.Err())
		}()
	}
	close(start)
	for i := uint64(1); i <= total; i++ {
		b.Publish(ev(i, "j"))
	}
	wg.Wait()
}

func TestGapAndFilter(t *testing.T) {
	b := New(4)
	for i := uint64(1); i <= 10; i++ {
		b.Publish(ev(i, fmt.Sprint("j", i%2)))
	}
	if s := b.Subscribe("", 8, 1); s.Gap() {
		t.Fatal("gap reported while the ring still holds what follows 8")
	}
	s := b.Subscribe("", 2, 1)
	if !s.Gap() || s.Since() != 10 {
		t.Fatalf("gap %v since %d", s.Gap(), s.Since())
	}
	f := b.Subscribe("j1", 0, 4)
	b.Publish(ev(11, "j1"), ev(12, "j0"))
	var got []uint64
	for len(got) < 3 {
		got = append(got, (<-f.C()).ID)
	}
	if fmt.Sprint(got) != "[7 9 11]" {
		t.Fatalf("filtered: %v", got)
	}
	b.Publish(ev(5, "j1")) // not above the last id: dropped
	select {
	case e := <-f.C():
		t.Fatalf("republished event delivered: %d", e.ID)
	default:
	}
}

func TestSlowSubscriberDropped(t *testing.T) {
	b := New(16)
	slow := b.Subscribe("", 0, 2)
	fast := b.Subscribe("", 0, 100)
	other := b.Subscribe("other-job", 0, 1)
	for i := uint64(1); i <= 10; i++ {
		b.Publish(ev(i, "j"))
	}
	n := 0
	for range slow.C() {
		n++
	}
	if !errors.Is(slow.Err(), ErrSlowSubscriber) || n != 2 {
		t.Fatalf("slow: %d events, err %v", n, slow.Err())
	}
	if len(fast.C()) != 10 || fast.Err() != nil {
		t.Fatalf("fast: %d buffered, err %v", len(fast.C()), fast.Err())
	}
	if other.Err() != nil {
		t.Fatal("other job's subscriber was charged for events it does not get")
	}
	fast.Close()
	fast.Close()
	b.Close()
	if !errors.Is(other.Err(), ErrClosed) {
		t.Fatalf("after bus close: %v", other.Err())
	}
}

func TestWriteEvent(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	if err := WriteEvent(w, Event{ID: 7, Type: "state", Data: []byte("a\nb")}); err != nil {
		t.Fatal(err)
	}
	WriteComment(w, "keep-alive")
	WriteEvent(w, Event{Type: "end", Data: []byte("{}")})
	want := "id: 7\nevent: state\ndata: a\ndata: b\n\n: keep-alive\n\nevent: end\ndata: {}\n\n"
	if buf.String() != want {
		t.Fatalf("wrote %q, want %q", buf.String(), want)
	}
	if _, err := ParseLastEventID("x"); err == nil {
		t.Fatal("bad id accepted")
	}
	if n, err := ParseLastEventID(""); n != 0 || err != nil {
		t.Fatal("empty id")
	}
}

// BenchmarkPublish publishes to 1,000 job subscribers and 4 all-jobs
// subscribers; BenchmarkPublishBaselineChanSend is one buffered channel
// send per event, the floor.
func BenchmarkPublish(b *testing.B) {
	bus := New(4096)
	for i := range 1000 {
		bus.Subscribe(fmt.Sprint("job-", i), 0, b.N+1)
	}
	for range 4 {
		bus.Subscribe("", 0, b.N+1)
	}
	b.ResetTimer()
	for i := range b.N {
		bus.Publish(Event{ID: uint64(i + 1), JobID: fmt.Sprint("job-", i%1000)})
	}
}

func BenchmarkPublishBaselineChanSend(b *testing.B) {
	ch := make(chan Event, b.N)
	for i := range b.N {
		ch <- Event{ID: uint64(i + 1)}
	}
}
