// Package coordinator is one node of hearth's control plane.
//
//   - State: a hashicorp/raft state machine holding jobs, the model catalog,
//     host registrations, coordinator addresses and idempotency keys
//     (fsm.go states its concurrency and determinism contracts). Every entry
//     also yields job events with ids derived from the log index, so every
//     node streams the same events (events.go).
//   - Cluster: three ways to form the Raft group and a join/remove API
//     (cluster.go); any node takes any request and followers forward to the
//     leader (forward.go).
//   - Leader-only loops: the scheduler places each queued job on the slot
//     with the smallest estimated start time (scheduler.go); the sweeper
//     marks silent hosts down, which requeues their jobs, and times out jobs
//     past their TTL or run timeout (sweeper.go); the dispatcher delivers
//     webhooks whose state lives in the log (webhooks.go).
//   - Acceptance: submissions are validated off the log and group-committed
//     into SubmitJobs entries (submit.go, batch.go).
//   - The HTTP API on fasthttp with bearer-token scopes (api.go, auth.go),
//     where clients submit and watch jobs and agents register, heartbeat,
//     long-poll for assignments and report (agentapi.go).
//
// New(cfg) starts a node and Close stops it, so tests, the benchmark and the
// dev cluster run real nodes in-process.
package coordinator
