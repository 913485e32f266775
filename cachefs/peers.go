package cachefs

import (
	"context"
	"io"

	"github.com/hearth-gpu/hearth/proto"
)

// Peers is the rest of the pool as a fetch sees it: which hosts hold a blob
// or are downloading it, how to read a byte range from one of them, and
// where to publish this host's own progress. The agent implements it with
// gossip and the peer blob server; cachefs knows neither.
type Peers interface {
	// Self is this host's name, as other hosts' Holders list it.
	Self() string
	// Holders lists the other live hosts that hold d whole or in part
	// (including those that have started and hold no chunk yet).
	Holders(d proto.Digest) []PeerHolder
	// OpenRange reads bytes [off, off+n) of d from peer. The bytes are
	// checked by the caller.
	OpenRange(ctx context.Context, peer string, d proto.Digest, off, n int64) (io.ReadCloser, error)
	// Announce publishes that this host has written chunks of d (none:
	// it has started to download d).
	Announce(d proto.Digest, chunks []int)
	// Finished publishes that this host's download of d ended: the blob is
	// cached (ok) or the download was abandoned.
	Finished(d proto.Digest, ok bool)
}

// PeerHolder is one host that holds a blob.
type PeerHolder struct {
	Name string
	// Whole: the host holds the whole, verified blob; otherwise it is
	// downloading it and holds Chunks.
	Whole  bool
	Chunks []int
	// Distance ranks hosts by the network between: 0 the same rack, 1 the
	// same zone, 2 anywhere else. Nearer hosts are asked first.
	Distance int
}

// RangeOrigin is an Origin that can read part of an object. Chunked
// fetches read the chunks no peer has this way; an Origin without it is
// read from the start and the bytes before the chunk are skipped.
type RangeOrigin interface {
	Origin
	OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
}

// Blob is what a fetch needs to know of a blob: its digest, and from the
// catalog its size, its chunk digests (empty: it moves whole) and where
// the origin keeps it.
type Blob struct {
	Digest    proto.Digest
	Size      int64
	ChunkSize int64
	Chunks    []proto.Digest
	Origin    Origin
	Key       string
}

// BlobOf describes a catalog model as a Blob at origin o.
func BlobOf(m proto.ModelRef, o Origin) Blob {
	return Blob{Digest: m.Digest, Size: m.Size, ChunkSize: m.ChunkSize, Chunks: m.Chunks, Origin: o, Key: m.Origin}
}

// chunked reports whether b can be fetched in chunks from several hosts.
func (b Blob) chunked() bool {
	return b.Size > 0 && b.ChunkSize > 0 && len(b.Chunks) == proto.ChunkCount(b.Size, b.ChunkSize)
}

// SetPeers makes fetches ask p's hosts before the origin. Call it once,
// before the first Fetch that should use peers; nil turns peers off.
func (s *Store) SetPeers(p Peers) {
	if p == nil {
		s.peers.Store(nil)
		return
	}
	s.peers.Store(&p)
}

func (s *Store) peerSet() Peers {
	if p := s.peers.Load(); p != nil {
		return *p
	}
	return nil
}
