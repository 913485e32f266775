// Package gossip is the hashicorp/memberlist pool that agents and
// coordinators join: who is in the cluster and alive, what each member is
// (NodeMeta), and which blobs each member's cache holds, so a host can fetch
// a model from a peer before going to the origin.
//
// # What travels how
//
// memberlist moves three kinds of data, and the pool uses each for what it
// is good at:
//
//   - Membership and failure detection: memberlist's own probes and alive,
//     suspect and dead messages, over UDP with TCP fallback. A member that
//     stops answering is declared dead after the suspicion timeout; one
//     that calls Leave first is reported left at once. memberlist reports
//     both as a departure, so Leave also broadcasts a msgLeave that lets
//     peers tell them apart.
//   - NodeMeta: role, API and blob addresses, labels (zone, rack) and the
//     inventory version, inside every alive message. Alive messages are UDP
//     packets, so memberlist caps meta at memberlist.MetaMaxSize, 512 bytes;
//     ValidateConfig and UpdateMeta measure the encoding (see
//     NodeMeta.Encode) with the widest inventory version and refuse
//     anything larger with ErrMetaTooLarge rather than truncate it.
//   - Cache inventories, too big for meta, go two ways. Each change (Added,
//     Evicted, ChunksHave, and the differences a SetInventory makes) is a
//     small msgDigest broadcast through a TransmitLimitedQueue, which
//     memberlist piggybacks on its gossip packets; a member that learns
//     something new from one passes it on, because memberlist sends a
//     broadcast only from where it was queued, to a few members at random.
//     Broadcasts can be lost, so full inventories also travel in push/pull
//     (Delegate.LocalState and MergeRemoteState), the periodic TCP state
//     exchange with one random member and the join handshake: each member
//     sends its own and what it knows of every alive member's.
//
// # Inventory versions
//
// A member numbers its own inventory changes 1, 2, 3, ... within an epoch,
// its start time, so a restarted member's state replaces its old one. Each
// change carries the digest's whole state on that member (tiers and chunk
// bitmap), not a difference, so applying it is idempotent. A peer applies a
// change only if it is newer than what it holds for that digest, and keeps
// evictions as tombstones until a push/pull snapshot covers them; so
// broadcasts may arrive late, twice, out of order or not at all, and every
// member still converges on each member's latest inventory. When a member
// is declared dead or leaves, peers drop its inventory and refuse gossip
// about it, so Holders only ever names alive members.
//
// # Wire format
//
// Every pool message and push/pull state starts with a type byte (msgDigest,
// msgInventories, msgLeave in wire.go; NodeMeta has its own version byte).
// Types are numbered once and never reused; a member skips a type it does
// not know, and logs and ignores a message it cannot decode, so a bad or
// newer peer cannot crash it. Digests travel as their 32 raw bytes, chunk
// sets as bitmaps. A change bigger than one UDP packet (a chunk set past
// about 8,000 chunks) is not broadcast and waits for push/pull.
//
// # Encryption and label
//
// Config.SecretKeys turns on memberlist's AES-GCM encryption of every
// packet and stream; the first key encrypts, all decrypt. Members with
// different keys cannot talk: Join fails with ErrWrongKey and both sides
// log that the gossip key is probably wrong. Rotate a key member by member
// with InstallKey everywhere, then UseKey everywhere, then RemoveKey
// everywhere; the keyring is local, nothing propagates it.
//
// Config.Label is written in clear before every packet and stream, and a
// member drops traffic with another label, so two clusters sharing a
// network (staging and production, say) never merge even if they share a
// key or have none. A seed with another label hangs up without a reason,
// so such a Join fails with ErrNoSeed, whose message names the label as a
// suspect.
//
// # Concurrency
//
// memberlist calls the delegate from its own goroutines, the membership
// callbacks with its node lock held. The pool's lock is always taken after
// memberlist's, never before, and Config.Events is called from a goroutine
// of the pool's own so that it may call back into the Pool.
package gossip
