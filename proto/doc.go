// Package proto is the wire contract between hearth agents and coordinators:
// jobs, models, hosts, GPUs, slots, placements, heartbeats, assignments and
// the Raft commands that change the coordinator's replicated state.
//
// It imports only the standard library, so both halves of the system (and
// any client) can depend on it without pulling in the other half.
//
// # Raft command encoding
//
// Every entry hearth appends to the Raft log is one Command, framed as:
//
//	offset  size      field
//	0       1         magic 0x68 ('h')
//	1       1         encoding version (CommandEncodingVersion, now 1)
//	2       1..10     command type, unsigned varint (CommandType)
//	.       1..10     payload length n, unsigned varint
//	.       n         payload: the command's body as JSON
//	.       4         CRC-32C (Castagnoli) of every byte before it, big endian
//
// Command types are numbered explicitly and only ever appended: a number,
// once released, keeps its meaning forever, so a log written by an old
// version replays the same on a new one. A decoder that meets a type it does
// not know refuses the entry with ErrUnknownCommand rather than guessing:
// silently skipping a state change would let replicas diverge. The payload is
// JSON because its field names are the same stable contract the HTTP API
// uses, and unknown fields in it are rejected for the same reason.
package proto

// Version is the agent↔coordinator protocol version. An agent sends it with
// every registration and heartbeat; a coordinator refuses a version it does
// not speak with a clear error instead of misreading the body.
const Version = 1
