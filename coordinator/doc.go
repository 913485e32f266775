// Package coordinator is one node of hearth's control plane: a hashicorp/raft
// state machine holding jobs, the model catalog, host registrations and
// placements (fsm.go states its concurrency contract); a scheduler that runs
// only on the leader and places each queued job on the slot with the
// smallest estimated start time (scheduler.go); and the HTTP API on
// fasthttp, where clients submit and watch jobs and agents register,
// heartbeat, long-poll for assignments and report.
//
// New(cfg) starts a node and Close stops it, so tests and the dev cluster
// run real nodes in-process.
package coordinator
