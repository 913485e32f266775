// Package cachefs is a host's content-addressed disk cache of model blobs,
// together with the origins (an object store, a local directory) it fills
// itself from.
//
// # On-disk layout
//
// A Store owns one directory, Config.Dir:
//
//	Dir/
//	  LOCK                          flock'd while a Store has Dir open
//	  tmp/                          files that are not (or no longer) blobs
//	    <hex>.<random>.partial      a blob being written by Put
//	    evict-<hex>-<n>             an evicted blob waiting to be unlinked
//	  blobs/sha256/
//	    <h0h1>/                     shard: the digest's first two hex digits
//	      <64 hex>                  one whole, verified blob named by its sha256
//
// A blob's path is a pure function of its digest, so nothing on disk maps
// model names to blobs; names live in the coordinator's catalog. A blob
// file's modification time is its last use: Store.Path bumps it, and Open
// reads it back so recency survives a restart (use counts do not: see
// "Budget"). Pins are held in
// memory only; they belong to running jobs, which do not survive a restart
// of the agent either.
//
// # Write protocol
//
// Put never writes into blobs/. It
//
//  1. creates a new file in tmp/ (the same file system as blobs/, so the
//     rename in step 5 is atomic);
//  2. streams the bytes into it while hashing them with sha256;
//  3. compares the sum with the digest it was asked for and, on a
//     mismatch, deletes the file and returns ErrDigestMismatch;
//  4. fsyncs the file, so its data is on disk before its name is;
//  5. renames it to blobs/sha256/<h0h1>/<hex>;
//  6. fsyncs the shard directory, so the rename itself is durable.
//
// A crash before step 5 leaves only a file in tmp/, which the next Open
// deletes. The rename is atomic, so a reader, and the scan after a crash,
// sees either no blob or the whole one. Because the data is synced (step 4)
// before the name exists (step 5), a name that survives a crash never points
// at data that did not. A crash between 5 and 6 may lose the name, which
// costs one download, never a wrong byte. Eviction moves a blob's name into
// tmp/ first and unlinks it later, so an eviction cut short by a crash is
// finished by the next Open.
//
// # Open
//
// Open empties tmp/ and rebuilds its index by scanning blobs/: each file's
// size, and its mtime as its last use. No index file is kept, so there is
// nothing that a crash could make disagree with the disk.
//
// Open does not rehash blobs: at 2–24 GB each that would take minutes per
// host on every start. It trusts the write protocol, and removes what the
// protocol cannot have made: names that are not 64 lowercase hex digits,
// files in the wrong shard, anything that is not a regular file, and empty
// files other than the empty blob. A blob copied into blobs/ by hand, which
// the protocol did not check, is kept as it is; Store.Verify rehashes one
// blob on demand and drops it if it does not match its name.
//
// # Budget
//
// Config.MaxBytes bounds the bytes of all blobs under blobs/. A blob counts
// only once it is renamed into place; before that rename, Put makes room by
// evicting unpinned blobs as S3-FIFO picks them, counted in bytes: a new
// blob waits in a small queue (a tenth of the budget) and leaves first
// unless it is used again, which moves it to the main queue; the main
// queue evicts its oldest blob that has no uses left. A blob evicted from
// the small queue and fetched again soon after goes straight to main.
// Replaying Zipf job traces over a catalog of SD1.5, SDXL and Flux models
// (BenchmarkEvictionPolicies), it fetched 12–21% fewer bytes than least
// recently used first, at 50–200 GB budgets, with steady and with drifting
// popularity; GDSF did better while popularity held still and worse than
// LRU once it drifted. Use counts live in memory only: Open seeds the
// policy with every blob in mtime order, as if each had just arrived; a
// restart every 1,000 jobs of those traces cost under one point of
// byte-miss ratio.
//
// If that cannot make room because the rest is pinned, Put fails with
// ErrNoSpace; a blob larger than the whole budget fails with ErrTooLarge, as
// soon as its size is known. Neither is kept.
//
// # RAM tier
//
// A RAMTier keeps hot blobs resident in host memory within its own budget,
// RAMConfig.MaxBytes: a 6.9 GB checkpoint copies to a GPU in about 0.13 s
// from locked RAM, against about 1.4 s through the page cache and 4 s from
// disk. Promote maps the blob file read-only and shared, so the tier's pages
// are the page cache's own and cost no second copy, and mlocks them so the
// kernel cannot drop them. Where mlock is refused (RLIMIT_MEMLOCK below the
// budget and no CAP_IPC_LOCK) the tier warns once and keeps the mapping
// anyway, with its pages faulted in: the page cache then holds them until
// memory runs short. Set LimitMEMLOCK=infinity in the agent's unit to lock.
//
// Promote rehashes the bytes as they come in, after locking them, so the
// bytes verified are the bytes that stay; a blob that no longer matches its
// digest is dropped from the Store, like Verify does, and fetched again next
// time. A resident blob holds a Store pin, so the disk tier never evicts it
// underneath. To make room, Promote demotes blobs that no reader holds,
// least recently used first. Acquire hands out the mapped bytes themselves;
// they stay mapped until released, even across Demote of other blobs or
// Close. Demoting unmaps and unpins; the blob stays on disk.
//
// # Scrub
//
// Open never rehashes, and a blob on disk can rot after Put verified it.
// Store.Scrub rehashes every blob, reading with O_DIRECT where the file
// system allows, so it checks the disk rather than pages cached when the
// blob was written, and so it does not push models jobs are about to load
// out of the page cache. ScrubOptions.BytesPerSecond paces it to leave the
// disk's bandwidth to jobs. A corrupt blob is dropped, pinned or not, and the
// next Fetch downloads it again. The agent runs Store.ScrubEvery in the
// background; with ScrubOptions.MaxBytes each pass checks part of the cache,
// starting with the blobs it checked least recently.
package cachefs
