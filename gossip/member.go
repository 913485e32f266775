package gossip

import (
	"maps"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's liveness as this member sees it.
//
// memberlist also has a suspect state, between alive and dead, but it tells
// delegates only of joins, updates and departures, and its Node values may
// not be read outside its lock; a suspect member shows as alive here until
// it is declared dead.
type State int

const (
	StateAlive State = iota
	// StateDead: failure detection gave up on the member (it crashed or
	// is cut off). Its inventory is dropped.
	StateDead
	// StateLeft: the member said goodbye (Leave). Its inventory is dropped.
	StateLeft
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// Member is one node of the pool.
type Member struct {
	Name string
	// Addr is the member's gossip address, IP:port.
	Addr string
	// Role, APIAddr, BlobAddr, Labels and InventoryVersion come from the
	// member's NodeMeta; they are empty if its meta could not be read.
	Role             Role
	APIAddr          string
	BlobAddr         string
	Labels           map[string]string
	InventoryVersion uint64
	State            State
	// Since is when this member last saw State change.
	Since time.Time
}

func (m Member) clone() Member {
	m.Labels = maps.Clone(m.Labels)
	return m
}

// EventType says what happened to a member.
type EventType int

const (
	EventJoin EventType = iota
	// EventUpdate: the member's meta changed.
	EventUpdate
	// EventLeave: the member left on purpose.
	EventLeave
	// EventDead: failure detection declared the member dead.
	EventDead
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventDead:
		return "dead"
	}
	return "unknown"
}

// Event is passed to Config.Events.
type Event struct {
	Type   EventType
	Member Member
}

// memberFromNode copies what it needs out of n, which memberlist owns.
// n.State is not used: memberlist keeps the state elsewhere and leaves
// that field zero.
func memberFromNode(n *memberlist.Node, state State) (Member, error) {
	m := Member{Name: n.Name, Addr: n.Address(), State: state, Since: time.Now()}
	meta, err := DecodeNodeMeta(n.Meta)
	if err != nil {
		return m, err
	}
	m.Role, m.APIAddr, m.BlobAddr = meta.Role, meta.APIAddr, meta.BlobAddr
	m.Labels, m.InventoryVersion = meta.Labels, meta.InventoryVersion
	return m, nil
}
