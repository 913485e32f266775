package proto

import (
	"crypto/sha256"
	"fmt"
	"io"
)

// Chunks split a model's bytes for transfer between hosts: a host fetches
// different chunks from different peers at once, checks each against its
// own digest from the catalog (so one bad peer costs one chunk, not the
// whole model), and serves the chunks it has before the rest arrive.
const (
	// MinChunkSize is the smallest chunk: below it the per-request cost
	// outweighs the spreading.
	MinChunkSize = 8 << 20
	// MaxChunksPerModel bounds the chunk list a catalog entry carries (and
	// the bitmap gossip publishes for a partial download).
	MaxChunksPerModel = 4096
)

// ChunkSizeFor is the chunk size a model of size bytes is published with:
// MinChunkSize, doubled until the model has at most 1,024 chunks.
func ChunkSizeFor(size int64) int64 {
	c := int64(MinChunkSize)
	for size > c*1024 {
		c *= 2
	}
	return c
}

// ChunkCount is how many chunks of chunkSize bytes make size bytes.
func ChunkCount(size, chunkSize int64) int {
	if chunkSize <= 0 || size <= 0 {
		return 0
	}
	return int((size + chunkSize - 1) / chunkSize)
}

// HashChunked reads r to the end and returns its size, its digest and the
// digest of each chunkSize piece, in one pass.
func HashChunked(r io.Reader, chunkSize int64) (int64, Digest, []Digest, error) {
	whole, part := sha256.New(), sha256.New()
	var chunks []Digest
	var n int64
	buf := make([]byte, 1<<20)
	for {
		want := min(int64(len(buf)), chunkSize-n%chunkSize)
		nr, err := io.ReadFull(r, buf[:want])
		if nr > 0 {
			whole.Write(buf[:nr])
			part.Write(buf[:nr])
			n += int64(nr)
			if n%chunkSize == 0 {
				chunks = append(chunks, DigestFromSum(part.Sum(nil)))
				part.Reset()
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return n, "", nil, err
		}
	}
	if n%chunkSize != 0 {
		chunks = append(chunks, DigestFromSum(part.Sum(nil)))
	}
	return n, DigestFromSum(whole.Sum(nil)), chunks, nil
}

// validateChunks checks a chunk list against the model's size.
func validateChunks(size, chunkSize int64, chunks []Digest) *FieldError {
	if len(chunks) == 0 && chunkSize == 0 {
		return nil
	}
	if chunkSize < 1<<20 || chunkSize > 1<<32 {
		return &FieldError{Field: "chunk_size", Message: fmt.Sprintf("chunk_size %d must be between 1 MiB and 4 GiB when chunks are given", chunkSize)}
	}
	want := ChunkCount(size, chunkSize)
	if want > MaxChunksPerModel {
		return &FieldError{Field: "chunk_size", Message: fmt.Sprintf("chunk_size %d splits %d bytes into %d chunks, more than %d; use ChunkSizeFor", chunkSize, size, want, MaxChunksPerModel)}
	}
	if len(chunks) != want {
		return &FieldError{Field: "chunks", Message: fmt.Sprintf("%d bytes in chunks of %d make %d chunks, but %d chunk digests were given", size, chunkSize, want, len(chunks))}
	}
	for i, d := range chunks {
		if err := d.Validate(); err != nil {
			return &FieldError{Field: "chunks", Message: fmt.Sprintf("chunk %d: %v", i, err)}
		}
	}
	return nil
}
