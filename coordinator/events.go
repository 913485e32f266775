package coordinator

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/coordinator/eventbus"
	"github.com/hearth-gpu/hearth/proto"
)

// Event streams. Every node turns the entries it applies into events (the
// FSM emits them with ids derived from the log index) and publishes them on
// its own bus, so any node can serve any stream, and a client that loses
// its node resumes on another with Last-Event-ID. A job's stream replays
// the job's history from the replicated state, so it can resume from any
// point; the cluster-wide stream replays from the bus's ring of recent
// events and says "reset" when the client has fallen further behind.

// eventRingSize is how many recent events each node keeps for resuming the
// cluster-wide stream.
const eventRingSize = 16384

// keepAliveEvery is how often an idle stream gets a comment, so proxies and
// clients can tell a quiet stream from a dead one.
const keepAliveEvery = 15 * time.Second

// eventEnd is the last event of a job's stream, sent once the job is
// terminal; the stream then closes.
const eventEnd = "end"

// publishEvents is the FSM's event hook.
func (s *Server) publishEvents(evs []proto.JobEvent) {
	out := make([]eventbus.Event, 0, len(evs))
	for i := range evs {
		data, err := json.Marshal(&evs[i])
		if err != nil {
			s.log.Error("encode event", "err", err)
			continue
		}
		out = append(out, eventbus.Event{ID: evs[i].ID, Type: evs[i].Type, JobID: evs[i].JobID, Data: data})
	}
	s.bus.Publish(out...)
}

// lastEventID reads where a client resumes: the Last-Event-ID header (what
// EventSource sends on reconnect) or ?after=.
func lastEventID(ctx *fasthttp.RequestCtx) (uint64, error) {
	v := ctx.Request.Header.Peek("Last-Event-ID")
	field := "Last-Event-ID"
	if len(v) == 0 {
		v, field = ctx.QueryArgs().Peek("after"), "after"
	}
	id, err := eventbus.ParseLastEventID(string(v))
	if err != nil {
		return 0, errBadRequest("invalid_header", field, "%s %q is not an event id: %v", field, v, err)
	}
	return id, nil
}

func startSSE(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/event-stream")
	ctx.Response.Header.Set("Cache-Control", "no-cache")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	ctx.SetStatusCode(http.StatusOK)
}

func (s *Server) handleJobEvents(ctx *fasthttp.RequestCtx) {
	id, _ := ctx.UserValue("id").(string)
	after, err := lastEventID(ctx)
	if err != nil {
		writeError(ctx, err)
		return
	}
	// Subscribe before reading the job: an event applied before the
	// subscription is in the job's history, one applied after comes live;
	// ids dedupe the overlap.
	sub := s.bus.Subscribe(id, after, 256)
	j, ok := s.awaitJob(id, 2*time.Second)
	if !ok {
		sub.Close()
		writeError(ctx, fmt.Errorf("%w: %q (this node waited 2 s for it to arrive)", ErrJobNotFound, id))
		return
	}
	startSSE(ctx)
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer sub.Close()
		sent := after
		send := func(ev eventbus.Event) bool {
			if ev.ID <= sent {
				return true
			}
			sent = ev.ID
			return eventbus.WriteEvent(w, ev) == nil
		}
		for i := range j.History {
			ev := &j.History[i]
			if ev.ID <= sent {
				continue
			}
			data, _ := json.Marshal(ev)
			if !send(eventbus.Event{ID: ev.ID, Type: ev.Type, JobID: id, Data: data}) {
				return
			}
		}
		if j.State.Terminal() {
			s.endStream(w, j)
			return
		}
		if s.streamLive(w, sub, send, func(ev eventbus.Event) bool { return ev.Type == proto.EventState && terminalEvent(ev) }) {
			if j, ok := s.fsm.Job(id); ok {
				s.endStream(w, j)
			}
		}
	})
}

// awaitJob returns job id, waiting up to d for it to appear: a client that
// submits through the leader and watches through a follower may be a few
// milliseconds ahead of that follower's log.
func (s *Server) awaitJob(id string, d time.Duration) (j *proto.Job, ok bool) {
	s.awaitState(d, func() bool {
		j, ok = s.fsm.Job(id)
		return ok
	})
	return j, ok
}

// terminalEvent reports whether a state event moved its job to a terminal
// state.
func terminalEvent(ev eventbus.Event) bool {
	var je struct {
		State proto.JobState `json:"state"`
	}
	return json.Unmarshal(ev.Data, &je) == nil && je.State.Terminal()
}

func (s *Server) endStream(w *bufio.Writer, j *proto.Job) {
	data, _ := json.Marshal(j)
	_ = eventbus.WriteEvent(w, eventbus.Event{ID: 0, Type: eventEnd, JobID: j.ID, Data: data})
}

// streamLive relays sub's events until done(ev) holds for one sent (true),
// the client goes away, the subscription ends or the node shuts down
// (false). A subscriber that fell too far behind is dropped by the bus; the
// client resumes with Last-Event-ID.
func (s *Server) streamLive(w *bufio.Writer, sub *eventbus.Subscription, send func(eventbus.Event) bool, done func(eventbus.Event) bool) bool {
	t := time.NewTicker(keepAliveEvery)
	defer t.Stop()
	for {
		select {
		case ev, ok := <-sub.C():
			if !ok {
				return false
			}
			if !send(ev) {
				return false
			}
			if done != nil && done(ev) {
				return true
			}
		case <-t.C:
			if eventbus.WriteComment(w, "keep-alive") != nil {
				return false
			}
		case <-s.ctx.Done():
			return false
		}
	}
}

func (s *Server) handleAllEvents(ctx *fasthttp.RequestCtx) {
	after, err := lastEventID(ctx)
	if err != nil {
		writeError(ctx, err)
		return
	}
	sub := s.bus.Subscribe("", after, 4096)
	startSSE(ctx)
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer sub.Close()
		if sub.Gap() {
			msg, _ := json.Marshal(map[string]any{
				"message": fmt.Sprintf("events after %d are no longer held by this node; re-read the state from GET /v1/jobs", after),
				"since":   sub.Since(),
			})
			// No id: the client's Last-Event-ID must not move past events
			// the ring still replays after this.
			if eventbus.WriteEvent(w, eventbus.Event{Type: "reset", Data: msg}) != nil {
				return
			}
		}
		sent := after
		s.streamLive(w, sub, func(ev eventbus.Event) bool {
			if ev.ID <= sent {
				return true
			}
			sent = ev.ID
			return eventbus.WriteEvent(w, ev) == nil
		}, nil)
	})
}
