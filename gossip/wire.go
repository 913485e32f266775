package gossip

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/hearth-gpu/hearth/proto"
)

// Message types, the first byte of every user message and of the push/pull
// state. Numbers are never reused: a new layout takes the next one, and a
// member skips types it does not know (logged at debug), so mixed versions
// can share a cluster.
const (
	// msgDigest: one member's state of one digest, broadcast on a change.
	//	msgDigest | str node | uvarint epoch | entry
	msgDigest byte = 1
	// msgInventories: full inventories, sent in push/pull.
	//	msgInventories | uvarint n | (str node | uvarint epoch |
	//	uvarint base | uvarint len(entries) | entry*)*
	msgInventories byte = 2
	// msgLeave: a member is leaving on purpose. memberlist does not tell
	// its delegates a leave from a death, so the pool says it itself.
	//	msgLeave | str node | uvarint epoch
	msgLeave byte = 3
)

// An entry is 32 bytes of sha256 | uvarint ver | tiers | str chunk bitmap.
const minEntryLen = 32 + 1 + 1 + 1

var errShort = errors.New("message truncated")

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail(errShort)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errors.New("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.fail(errShort)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string() string { return string(r.bytes(r.count(1))) }

// count reads a length and checks that many items of at least min bytes
// each can follow, so a forged length cannot make us allocate gigabytes.
func (r *reader) count(min int) int {
	n := r.uvarint()
	if r.err != nil {
		return 0
	}
	if n > uint64(len(r.b)/min) {
		r.fail(fmt.Errorf("length %d exceeds the %d bytes left", n, len(r.b)))
		return 0
	}
	return int(n)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendEntry(b []byte, d sum, e entry) []byte {
	b = append(b, d[:]...)
	b = binary.AppendUvarint(b, e.ver)
	b = append(b, byte(e.tiers))
	b = binary.AppendUvarint(b, uint64(len(e.chunks)))
	return append(b, e.chunks...)
}

func (r *reader) entry() (sum, entry) {
	var d sum
	copy(d[:], r.bytes(32))
	var e entry
	e.ver = r.uvarint()
	e.tiers = tierMask(r.byte()) & maskKnown
	if c := r.bytes(r.count(1)); len(c) > 0 {
		e.chunks = trimBitmap(append([]byte(nil), c...))
	}
	return d, e
}

func encodeDigestMsg(node string, epoch uint64, d sum, e entry) []byte {
	b := []byte{msgDigest}
	b = appendString(b, node)
	b = binary.AppendUvarint(b, epoch)
	return appendEntry(b, d, e)
}

func decodeDigestMsg(b []byte) (node string, epoch uint64, d sum, e entry, err error) {
	r := reader{b: b[1:]}
	node = r.string()
	epoch = r.uvarint()
	d, e = r.entry()
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	return node, epoch, d, e, r.err
}

func encodeLeaveMsg(node string, epoch uint64) []byte {
	b := appendString([]byte{msgLeave}, node)
	return binary.AppendUvarint(b, epoch)
}

func decodeLeaveMsg(b []byte) (node string, epoch uint64, err error) {
	r := reader{b: b[1:]}
	node = r.string()
	epoch = r.uvarint()
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	return node, epoch, r.err
}

// snapshot is one member's inventory as it travels in push/pull: complete
// through base, plus entries newer than base (tombstones among them).
type snapshot struct {
	node  string
	epoch uint64
	base  uint64
	ents  map[sum]entry
}

func encodeInventories(snaps []snapshot) []byte {
	b := []byte{msgInventories}
	b = binary.AppendUvarint(b, uint64(len(snaps)))
	for _, s := range snaps {
		b = appendString(b, s.node)
		b = binary.AppendUvarint(b, s.epoch)
		b = binary.AppendUvarint(b, s.base)
		b = binary.AppendUvarint(b, uint64(len(s.ents)))
		for d, e := range s.ents {
			b = appendEntry(b, d, e)
		}
	}
	return b
}

func decodeInventories(b []byte) ([]snapshot, error) {
	r := reader{b: b[1:]}
	n := r.count(4)
	snaps := make([]snapshot, 0, n)
	for range n {
		s := snapshot{node: r.string(), epoch: r.uvarint(), base: r.uvarint()}
		m := r.count(minEntryLen)
		s.ents = make(map[sum]entry, m)
		for range m {
			d, e := r.entry()
			s.ents[d] = e
		}
		if r.err != nil {
			break
		}
		snaps = append(snaps, s)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	return snaps, r.err
}

// sum is a digest's raw sha256: half the size of proto.Digest on the wire.
type sum [32]byte

func sumOf(d proto.Digest) (sum, error) {
	var s sum
	if err := d.Validate(); err != nil {
		return s, fmt.Errorf("gossip: %w", err)
	}
	_, err := hex.Decode(s[:], []byte(d.Hex()))
	return s, err
}

func (s sum) digest() proto.Digest { return proto.DigestFromSum(s[:]) }
