package gossip

import (
	"encoding/hex"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist.Delegate and memberlist.EventDelegate for
// a Pool, keeping those methods out of the Pool's API. memberlist calls them
// from its own goroutines, the event methods with its node lock held; none
// of them may call into memberlist or block.
type delegate struct{ p *Pool }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

func (d *delegate) NodeMeta(limit int) []byte {
	p := d.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.metaBytes) > limit {
		// Unreachable: config and UpdateMeta check the size. Sending no
		// meta beats memberlist's panic.
		p.log.Error("gossip node meta over the limit; sending none", "bytes", len(p.metaBytes), "limit", limit)
		return nil
	}
	return p.metaBytes
}

// NotifyMsg receives a broadcast. A change that is news here is passed on,
// since memberlist only sends a user broadcast from the member that queued
// it, to a few members at random.
func (d *delegate) NotifyMsg(b []byte) {
	p := d.p
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case msgDigest:
	case msgLeave:
		p.leaveMsg(b)
		return
	default:
		p.log.Debug("gossip message of unknown type skipped; is a newer build in the pool?", "type", b[0], "bytes", len(b))
		return
	}
	node, epoch, s, e, err := decodeDigestMsg(b)
	if err != nil {
		p.log.Warn("gossip bad inventory message ignored", "err", err, "bytes", len(b))
		return
	}
	p.mu.Lock()
	if node == p.cfg.NodeName || p.departedLocked(node) {
		p.mu.Unlock()
		return
	}
	r := p.remote[node]
	if r == nil {
		r = newRecord(epoch)
		p.remote[node] = r
	}
	news := r.apply(epoch, s, e)
	p.mu.Unlock()
	if news {
		p.send([]outgoing{{name: node + "/" + hex.EncodeToString(s[:]), msg: append([]byte(nil), b...)}})
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.p.queue.GetBroadcasts(overhead, limit)
}

// LocalState sends this member's inventory and what it knows of the other
// alive members', so inventories spread even between members that rarely
// push/pull with each other.
func (d *delegate) LocalState(join bool) []byte {
	p := d.p
	p.mu.Lock()
	defer p.mu.Unlock()
	snaps := []snapshot{p.local.snapshot(p.cfg.NodeName)}
	size := 0
	for name, r := range p.remote {
		if m := p.members[name]; m == nil || m.State != StateAlive {
			continue
		}
		s := r.snapshot(name)
		size += len(name) + len(s.ents)*(minEntryLen+8)
		if size > maxPushPullState {
			p.log.Warn("gossip push/pull state over its cap; some members' inventories left out", "cap", maxPushPullState)
			break
		}
		snaps = append(snaps, s)
	}
	return encodeInventories(snaps)
}

func (d *delegate) MergeRemoteState(b []byte, join bool) {
	p := d.p
	if len(b) == 0 {
		return
	}
	if b[0] != msgInventories {
		p.log.Debug("gossip push/pull state of unknown type skipped; is a newer build in the pool?", "type", b[0])
		return
	}
	snaps, err := decodeInventories(b)
	if err != nil {
		// The snapshots before the bad one are sound; keep them.
		p.log.Warn("gossip bad push/pull state; using what decoded", "err", err, "bytes", len(b), "decoded", len(snaps))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range snaps {
		if s.node == p.cfg.NodeName || p.departedLocked(s.node) {
			continue
		}
		r := p.remote[s.node]
		if r == nil {
			r = newRecord(s.epoch)
			p.remote[s.node] = r
		}
		r.merge(s)
	}
}

// departedLocked reports whether node is known dead or left, whose state
// must not come back through a member that has not noticed yet.
func (p *Pool) departedLocked(node string) bool {
	m := p.members[node]
	return m != nil && m.State != StateAlive
}

func (d *delegate) NotifyJoin(n *memberlist.Node) { d.p.nodeEvent(n, EventJoin) }

func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.p.nodeEvent(n, EventUpdate) }

// NotifyLeave is memberlist's word for both dead and left; a msgLeave seen
// before or after tells them apart.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.p.nodeEvent(n, EventDead) }

func (p *Pool) nodeEvent(n *memberlist.Node, t EventType) {
	state := StateAlive
	p.mu.Lock()
	if t == EventDead {
		_, intent := p.leaving[n.Name]
		if intent || (n.Name == p.cfg.NodeName && p.leavingSelf.Load()) {
			t = EventLeave
		}
	}
	p.mu.Unlock()
	switch t {
	case EventDead:
		state = StateDead
	case EventLeave:
		state = StateLeft
	}
	m, err := memberFromNode(n, state)
	if err != nil {
		p.log.Warn("gossip member meta unreadable; its role and addresses stay empty", "node", n.Name, "err", err)
	}
	p.mu.Lock()
	if prev := p.members[m.Name]; prev != nil && prev.State == m.State {
		m.Since = prev.Since
	}
	p.members[m.Name] = &m
	if state != StateAlive {
		delete(p.leaving, m.Name)
		if m.Name != p.cfg.NodeName {
			delete(p.remote, m.Name)
		}
	}
	if t == EventJoin {
		delete(p.leaving, m.Name)
	}
	ev := Event{Type: t, Member: m.clone()}
	p.mu.Unlock()
	p.logEvent(ev)
	p.emit(ev)
}

func (p *Pool) logEvent(ev Event) {
	m := ev.Member
	switch ev.Type {
	case EventJoin:
		p.log.Info("gossip member joined", "node", m.Name, "role", m.Role, "addr", m.Addr)
	case EventUpdate:
		p.log.Debug("gossip member updated", "node", m.Name)
	case EventLeave:
		p.log.Info("gossip member left", "node", m.Name, "addr", m.Addr)
	case EventDead:
		p.log.Warn("gossip member declared dead (no answer to probes)", "node", m.Name, "addr", m.Addr)
	}
}

// leaveMsg records that a member is leaving. If memberlist reported it gone
// first, it was reported dead; correct that to left.
func (p *Pool) leaveMsg(b []byte) {
	node, epoch, err := decodeLeaveMsg(b)
	if err != nil {
		p.log.Warn("gossip bad leave message ignored", "err", err, "bytes", len(b))
		return
	}
	p.mu.Lock()
	if node == p.cfg.NodeName {
		p.mu.Unlock()
		return
	}
	if r := p.remote[node]; r != nil && r.epoch > epoch {
		p.mu.Unlock()
		return // from an earlier run of a member that has since come back
	}
	var ev *Event
	news := false
	switch m := p.members[node]; {
	case m != nil && m.State == StateDead:
		m.State, m.Since = StateLeft, time.Now()
		ev, news = &Event{Type: EventLeave, Member: m.clone()}, true
	case m != nil && m.State == StateLeft:
	default:
		if _, ok := p.leaving[node]; !ok {
			p.leaving[node], news = epoch, true
		}
	}
	p.mu.Unlock()
	if ev != nil {
		p.logEvent(*ev)
		p.emit(*ev)
	}
	if news {
		p.send([]outgoing{{name: node + "/leave", msg: append([]byte(nil), b...)}})
	}
}

// outgoing is a broadcast waiting to be queued.
type outgoing struct {
	name string
	msg  []byte
}

func (p *Pool) outgoingLocked(s sum, e entry) outgoing {
	return outgoing{
		name: p.cfg.NodeName + "/" + hex.EncodeToString(s[:]),
		msg:  encodeDigestMsg(p.cfg.NodeName, p.epoch, s, e),
	}
}

func (p *Pool) send(msgs []outgoing) {
	for _, o := range msgs {
		if len(o.msg) > maxBroadcast {
			p.log.Debug("gossip change too big to broadcast; push/pull carries it", "bytes", len(o.msg))
			continue
		}
		p.queue.QueueBroadcast(&broadcast{o})
	}
	if p.queue.NumQueued() > maxQueued {
		p.queue.Prune(maxQueued)
	}
}

// broadcast is one change in memberlist's queue. Its name is member and
// digest, so a newer change to the same digest replaces an older one
// still queued.
type broadcast struct{ outgoing }

var _ memberlist.NamedBroadcast = (*broadcast)(nil)

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished()       {}
