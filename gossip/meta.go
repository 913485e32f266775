package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	"github.com/hashicorp/memberlist"
)

// ErrMetaTooLarge is returned when a NodeMeta would not fit in
// memberlist.MetaMaxSize bytes.
var ErrMetaTooLarge = errors.New("gossip: node meta too large")

// metaV1 is the first byte of an encoded NodeMeta. A new layout takes a new
// number, so a member can tell a meta it cannot read from a broken one.
const metaV1 = 1

// NodeMeta is what a member says about itself in every alive message.
// memberlist carries it in UDP packets, so it must stay under
// memberlist.MetaMaxSize (512) bytes encoded; cache inventories, which do
// not fit, travel separately (see doc.go).
type NodeMeta struct {
	Role     Role
	APIAddr  string
	BlobAddr string
	Labels   map[string]string
	// InventoryVersion is the version of the member's cache inventory when
	// it last replaced it whole (SetInventory). A peer holding an older one
	// knows it is behind until the next push/pull.
	InventoryVersion uint64
}

// Encode lays the meta out as
//
//	metaV1 | role | uvarint InventoryVersion | str APIAddr | str BlobAddr |
//	uvarint len(Labels) | (str key | str value)* in key order
//
// where role is 1 (agent) or 2 (coordinator) and str is a uvarint length and
// the bytes.
func (m NodeMeta) Encode() ([]byte, error) {
	b := m.encode()
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d; shorten Labels (they take most of it) or the addresses",
			ErrMetaTooLarge, len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

func (m NodeMeta) validate() error {
	for k := range m.Labels {
		if k == "" {
			return errors.New("gossip: Labels has an empty key; name each label (zone, rack, ...)")
		}
	}
	_, err := m.Encode()
	return err
}

func (m NodeMeta) encode() []byte {
	b := make([]byte, 0, 64)
	b = append(b, metaV1, roleByte(m.Role))
	b = binary.AppendUvarint(b, m.InventoryVersion)
	b = appendString(b, m.APIAddr)
	b = appendString(b, m.BlobAddr)
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m.Labels[k])
	}
	return b
}

// DecodeNodeMeta parses what Encode wrote.
func DecodeNodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	r := reader{b: b}
	if v := r.byte(); v != metaV1 {
		if r.err != nil {
			return m, fmt.Errorf("gossip: node meta is empty")
		}
		return m, fmt.Errorf("gossip: node meta version %d is not one this build reads (%d); upgrade it", v, metaV1)
	}
	m.Role = byteRole(r.byte())
	m.InventoryVersion = r.uvarint()
	m.APIAddr = r.string()
	m.BlobAddr = r.string()
	n := r.count(2)
	if n > 0 {
		m.Labels = make(map[string]string, n)
	}
	for range n {
		k := r.string()
		m.Labels[k] = r.string()
	}
	if r.err != nil {
		return NodeMeta{}, fmt.Errorf("gossip: node meta: %w", r.err)
	}
	return m, nil
}

func roleByte(r Role) byte {
	switch r {
	case RoleAgent:
		return 1
	case RoleCoordinator:
		return 2
	}
	return 0
}

func byteRole(b byte) Role {
	switch b {
	case 1:
		return RoleAgent
	case 2:
		return RoleCoordinator
	}
	return ""
}
