package coordinator

import (
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// liveHosts is the leader's in-memory view of each host's last heartbeat.
// It is deliberately not replicated: it changes every few seconds and a new
// leader rebuilds it from the next round of heartbeats.
type liveHosts struct {
	now  func() time.Time
	mu   sync.Mutex
	last map[string]liveHost
}

type liveHost struct {
	beat proto.Heartbeat
	at   time.Time
}

func newLiveHosts(now func() time.Time) *liveHosts {
	return &liveHosts{now: now, last: make(map[string]liveHost)}
}

func (h *liveHosts) record(b proto.Heartbeat) {
	h.mu.Lock()
	h.last[b.HostID] = liveHost{beat: b, at: h.now()}
	h.mu.Unlock()
}

// get returns the host's last heartbeat and whether it is within grace.
func (h *liveHosts) get(id string, grace time.Duration) (proto.Heartbeat, time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	l, ok := h.last[id]
	if !ok {
		return proto.Heartbeat{}, time.Time{}, false
	}
	return l.beat, l.at, h.now().Sub(l.at) <= grace
}

// view combines a registration with its live state for the API; active
// is how many jobs are placed on the host and not finished.
func (s *Server) hostView(h *proto.Host, active int) proto.HostView {
	v := proto.HostView{Host: *h, Status: proto.HostDown, Slots: []proto.SlotState{}, Cache: []proto.CachedBlob{}, ActiveJobs: active}
	beat, at, alive := s.hosts.get(h.ID, s.cfg.HeartbeatGrace)
	if !at.IsZero() {
		v.LastHeartbeat = &at
		v.Slots, v.Cache, v.GPUStates = beat.Slots, beat.Cache, beat.GPUs
	}
	switch {
	case h.DownAt != nil:
		// Marked down in the log (its jobs were requeued) until it
		// registers again, whatever its last beat says.
	case alive && (h.Drain || beat.Draining):
		// An operator's drain, or an agent that is shutting down.
		v.Status = proto.HostDraining
		if active == 0 {
			v.Status = proto.HostDrained
		}
	case alive && beat.Degraded != "":
		v.Status = proto.HostDegraded
		v.DegradedReason = beat.Degraded
	case alive:
		v.Status = proto.HostReady
	}
	return v
}
