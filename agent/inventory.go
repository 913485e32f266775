package agent

import (
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// inventorySync is the agent's half of the inventory exchange
// (proto.InventoryDelta): the inventory the coordinator acknowledged, and
// the versions sent since. A heartbeat carries the change against the
// acknowledged inventory, nothing when there is none, and the whole
// inventory when the coordinator holds none this agent knows of.
//
// Heartbeats go out one at a time (Agent.beatMu), so answers come back in
// the order of their requests; but a request that timed out may still have
// been applied, which is why every version sent is remembered until one
// above it is acknowledged.
type inventorySync struct {
	mu sync.Mutex
	// last is the last version handed out. It starts from the clock in
	// microseconds, so a restarted agent numbers above whatever its
	// predecessor sent, and only grows.
	last uint64
	// acked is the version the coordinator holds, held the inventory at
	// that version; 0 when it holds none this agent knows of.
	acked uint64
	held  map[proto.Digest]proto.CachedBlob
	sent  []sentInventory // not yet acknowledged, oldest first
	// legacyUntil, while in the future, has beats carry the whole list
	// in Cache: the coordinator does not speak the exchange.
	legacyUntil time.Time
}

type sentInventory struct {
	version uint64
	inv     map[proto.Digest]proto.CachedBlob
}

const (
	// maxUnacked bounds the versions remembered while unacknowledged;
	// past it the oldest is forgotten, and an answer naming it costs a
	// full inventory.
	maxUnacked = 8
	// legacyRetry is how long an agent sends whole lists after a
	// coordinator refused the exchange, before it tries again (the
	// coordinators may have been upgraded meanwhile).
	legacyRetry = 10 * time.Minute
)

func newInventorySync(now time.Time) *inventorySync {
	return &inventorySync{last: uint64(now.UnixMicro())}
}

// prepare sets b's inventory part from b.Cache, the whole inventory now:
// a change against the acknowledged version, nil when nothing changed, the
// whole inventory when none is acknowledged, or Cache left as it is while
// the coordinator does not speak the exchange. It reports whether b
// carries the whole inventory.
func (s *inventorySync) prepare(b *proto.Heartbeat, now time.Time) (whole bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Before(s.legacyUntil) {
		return true
	}
	cur := b.Cache
	b.Cache = nil
	inv := make(map[proto.Digest]proto.CachedBlob, len(cur))
	for _, cb := range cur {
		inv[cb.Digest] = cb
	}
	d := &proto.InventoryDelta{Base: s.acked}
	if s.acked == 0 {
		d.Added = slices.Collect(maps.Values(inv))
	} else {
		for dg, cb := range inv {
			if old, ok := s.held[dg]; !ok || old != cb {
				d.Added = append(d.Added, cb)
			}
		}
		for dg := range s.held {
			if _, ok := inv[dg]; !ok {
				d.Removed = append(d.Removed, dg)
			}
		}
		if len(d.Added) == 0 && len(d.Removed) == 0 {
			return false
		}
	}
	slices.SortFunc(d.Added, func(x, y proto.CachedBlob) int { return strings.Compare(string(x.Digest), string(y.Digest)) })
	slices.Sort(d.Removed)
	s.last++
	d.Version = s.last
	s.sent = append(s.sent, sentInventory{version: d.Version, inv: inv})
	if len(s.sent) > maxUnacked {
		s.sent = slices.Delete(s.sent, 0, len(s.sent)-maxUnacked)
	}
	b.Inventory = d
	return d.Full()
}

// ack takes the inventory version a coordinator answered with. It adopts
// a version this agent sent; anything else (0, a version it never sent
// or sent before the one acknowledged) means the coordinator holds
// nothing it can build on, and ack reports that the next beat must carry
// the whole inventory, numbered above the version heard.
func (s *inventorySync) ack(v uint64) (sendWhole bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v != 0 && v == s.acked {
		return false
	}
	if v > s.acked {
		for i, sent := range s.sent {
			if sent.version == v {
				s.acked, s.held = v, sent.inv
				s.sent = slices.Delete(s.sent, 0, i+1)
				return false
			}
		}
	}
	s.resetLocked()
	s.last = max(s.last, v)
	return true
}

// refused takes a heartbeat's error. When the coordinator refused the
// inventory part, the agent starts over with the whole inventory, or,
// when the coordinator does not know the field (an older version) or
// refused a whole inventory, sends whole Cache lists for a while. It
// reports whether sending again now may succeed.
func (s *inventorySync) refused(err error, wasWhole bool, now time.Time) bool {
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || !strings.HasPrefix(ae.Field, "inventory") {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ae.Code == "unknown_field" || wasWhole {
		s.legacyUntil = now.Add(legacyRetry)
	}
	s.resetLocked()
	return true
}

// reset forgets what the coordinator holds: the next beat carries the
// whole inventory (after a new registration, say).
func (s *inventorySync) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetLocked()
}

func (s *inventorySync) resetLocked() {
	s.acked, s.held, s.sent = 0, nil, nil
}
