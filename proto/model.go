package proto

import (
	"fmt"
	"strings"
	"time"
)

// Model is one entry of the model catalog: a name as a workflow refers to it
// (with its ComfyUI folder, "checkpoints/sd_xl_base_1.0.safetensors"), the
// one digest that name means, and where the origin keeps the bytes.
type Model struct {
	Name   string `json:"name"`
	Digest Digest `json:"digest"`
	Size   int64  `json:"size"`
	// Origin is the object's location in the origin store: a key relative to
	// the origin's root (a bucket or a directory).
	Origin string `json:"origin"`
	// ChunkSize and Chunks, when set, split the bytes for transfer between
	// hosts: Chunks[i] is the digest of bytes [i*ChunkSize, (i+1)*ChunkSize)
	// (see ChunkSizeFor and HashChunked). A model without them still moves
	// between hosts, but whole, from one peer at a time.
	ChunkSize int64     `json:"chunk_size,omitempty"`
	Chunks    []Digest  `json:"chunks,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// Index is the Raft index of the entry that last wrote this model.
	Index uint64 `json:"index,omitempty"`
}

// MaxModelSize bounds a catalog entry's declared size (1 TiB): larger is a
// typo, not a model.
const MaxModelSize = 1 << 40

// ValidateModelName checks a catalog name or origin key is a clean relative
// slash path: no empty, "." or ".." segments, not absolute, no backslashes or
// control characters. Names become paths on every host, so anything that
// could escape a directory is refused here, at the edge.
func ValidateModelName(name string) error {
	if name == "" {
		return fmt.Errorf("must not be empty")
	}
	if len(name) > 1024 {
		return fmt.Errorf("must be at most 1024 bytes")
	}
	if strings.HasPrefix(name, "/") {
		return fmt.Errorf("%q must be a relative path, not absolute", name)
	}
	for _, c := range name {
		if c < 0x20 || c == 0x7f || c == '\\' {
			return fmt.Errorf("%q contains a control character or backslash", name)
		}
	}
	for _, seg := range strings.Split(name, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%q has an empty path segment", name)
		case ".", "..":
			return fmt.Errorf("%q must not contain %q segments", name, seg)
		}
	}
	return nil
}

// Validate checks a model entry before it may enter the catalog.
func (m *Model) Validate() *FieldError {
	if err := ValidateModelName(m.Name); err != nil {
		return &FieldError{Field: "name", Message: "model name " + err.Error()}
	}
	if err := m.Digest.Validate(); err != nil {
		return &FieldError{Field: "digest", Message: err.Error()}
	}
	if m.Size <= 0 || m.Size > MaxModelSize {
		return &FieldError{Field: "size", Message: fmt.Sprintf("size %d must be between 1 and %d bytes", m.Size, int64(MaxModelSize))}
	}
	if m.Origin == "" {
		m.Origin = m.Name
	}
	if err := ValidateModelName(m.Origin); err != nil {
		return &FieldError{Field: "origin", Message: "origin key " + err.Error()}
	}
	return validateChunks(m.Size, m.ChunkSize, m.Chunks)
}

// FieldError is a validation failure that names the offending field, so the
// HTTP layer can answer {"error": {"code", "message", "field"}}.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}
