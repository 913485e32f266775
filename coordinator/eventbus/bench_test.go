package eventbus

import (
	"fmt"
	"testing"
)

// benchRound is how many events a benchmark publishes between drains; the
// drains run with the timer stopped, so buffers stay small whatever b.N is
// and no subscriber is ever dropped.
const benchRound = 4096

// BenchmarkPublish publishes one event at a time, round-robin over 1,000
// jobs, each watched by one subscriber, with 4 more subscribers to every
// job: 5 deliveries per event, into a 4,096-event ring. Compare with
// BenchmarkPublishBaselineChanSend, one buffered channel send per event,
// measured in the same run:
//
//	go test -run '^$' -bench Publish ./coordinator/eventbus/
func BenchmarkPublish(b *testing.B) {
	const jobs, watchAll = 1000, 4
	bus := New(4096)
	var subs []*Subscription
	ids := make([]string, jobs)
	for i := range ids {
		ids[i] = fmt.Sprintf("job-%06d", i)
		subs = append(subs, bus.Subscribe(ids[i], 0, benchRound/jobs+1))
	}
	for range watchAll {
		subs = append(subs, bus.Subscribe("", 0, benchRound))
	}
	data := []byte(`{"type":"state","state":"running"}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		bus.Publish(Event{ID: uint64(i + 1), Type: "state", JobID: ids[i%jobs], Data: data})
		if (i+1)%benchRound == 0 {
			b.StopTimer()
			for _, s := range subs {
				drain(s)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	for _, s := range subs {
		if err := s.Err(); err != nil {
			b.Fatalf("a subscriber was dropped: %v", err)
		}
	}
	b.ReportMetric(float64(b.N*(1+watchAll))/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkPublishBaselineChanSend is the floor for BenchmarkPublish: one
// buffered channel send per event, drained the same way.
func BenchmarkPublishBaselineChanSend(b *testing.B) {
	ch := make(chan Event, benchRound)
	data := []byte(`{"type":"state","state":"running"}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ch <- Event{ID: uint64(i + 1), Type: "state", JobID: "job-000000", Data: data}
		if (i+1)%benchRound == 0 {
			b.StopTimer()
			for len(ch) > 0 {
				<-ch
			}
			b.StartTimer()
		}
	}
}
