// Package eventbus fans job events out to Server-Sent Event streams on one
// coordinator node, and reads and writes the text/event-stream format.
//
// # Event ids
//
// An event's ID is cluster-wide and strictly increasing in publish order:
// the FSM derives it from the Raft log index of the entry that caused it,
// so every node publishes the same events with the same ids, in the same
// order. Ids are sparse (not every entry causes an event), so the bus never
// counts them; it only compares them. The SSE stream sends the id on every
// event, the browser's EventSource (or hearth's client) sends back the last
// one it saw as Last-Event-ID when it reconnects, and any node can resume
// the stream from there.
//
// # Replay and resume
//
// The bus keeps a ring of the most recent events. Subscribe(jobID, after,
// buf) hands back, on one channel, first the ring's events with ID > after
// (for the job, or for every job when jobID is "") and then live events,
// with nothing lost or repeated between the two: the replay and the
// registration happen under the lock Publish takes. When the node cannot
// vouch for every event after `after` (they have left the ring, or predate
// everything this node has published, as after a restart from a
// snapshot), Subscription.Gap reports it and the caller must resync from
// the replicated state instead.
//
// # Slow subscribers are dropped
//
// Publish runs on the Raft apply path, so it must never wait for a client.
// Each subscription's channel holds its replay plus buf live events; a
// subscriber whose channel is full when a live event arrives is dropped:
// its channel is closed and Err reports ErrSlowSubscriber. Nothing is lost
// for good: the client reconnects with the last id it received and is
// replayed from the ring (or told about the gap). Events for other jobs
// never reach, and so never fill, a job-filtered subscription.
//
// # Wire format
//
// WriteEvent, WriteComment and WriteRetry write the WHATWG text/event-stream
// format to the *bufio.Writer that fasthttp's SetBodyStreamWriter hands
// out; client.SSEReader parses it back (for the CLI, agents and tests,
// which must not import the coordinator).
package eventbus
