package runner

import (
	"encoding/json"

	"github.com/hearth-gpu/hearth/proto"
)

// ProtocolVersion is the worker protocol this package speaks; the package
// documentation describes it. A worker announces its version in its hello
// and the agent refuses any other, rather than misread its answers.
const ProtocolVersion = 1

// Request ops, as the "op" field spells them.
const (
	opLoad   = "load"
	opUnload = "unload"
	opRun    = "run"
	opCancel = "cancel"
)

// Events, as the "event" field spells them.
const (
	eventHello    = "hello"
	eventProgress = "progress"
)

// errCancelled is the error text a worker answers a cancelled request with.
const errCancelled = "cancelled"

type loadRequest struct {
	ID     int64       `json:"id"`
	Op     string      `json:"op"`
	Models []wireModel `json:"models"`
}

type unloadRequest struct {
	ID      int64          `json:"id"`
	Op      string         `json:"op"`
	Digests []proto.Digest `json:"digests"`
}

type runRequest struct {
	ID        int64           `json:"id"`
	Op        string          `json:"op"`
	JobID     string          `json:"job_id"`
	Kind      string          `json:"kind"`
	Input     json.RawMessage `json:"input"`
	Models    []proto.Digest  `json:"models"`
	OutputDir string          `json:"output_dir"`
}

type cancelRequest struct {
	ID     int64  `json:"id"`
	Op     string `json:"op"`
	Target int64  `json:"target"`
}

// workerMsg is any line a worker writes: a hello, a progress event or a
// final response. Which one it is follows from Event and OK.
type workerMsg struct {
	ID    int64  `json:"id"`
	Event string `json:"event,omitempty"`

	// Final responses: OK is set on exactly those.
	OK      *bool          `json:"ok,omitempty"`
	Error   string         `json:"error,omitempty"`
	Loaded  []proto.Digest `json:"loaded,omitempty"`
	LoadS   float64        `json:"load_s,omitempty"`
	Outputs []string       `json:"outputs,omitempty"`

	// Progress events.
	Value int    `json:"value,omitempty"`
	Max   int    `json:"max,omitempty"`
	Node  string `json:"node,omitempty"`

	// Hello.
	Protocol int    `json:"protocol,omitempty"`
	Name     string `json:"name,omitempty"`
	PID      int    `json:"pid,omitempty"`
}

func (m *workerMsg) ok() bool { return m.OK != nil && *m.OK }

// failure returns the worker's error text, never empty.
func (m *workerMsg) failure() string {
	if m.Error == "" {
		return "the worker gave no reason"
	}
	return m.Error
}
