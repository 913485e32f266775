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
// reads it back so eviction order survives a restart. Pins are held in
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
// evicting unpinned blobs, least recently used first. If that cannot make
// room because the rest is pinned, Put fails with ErrNoSpace; a blob larger
// than the whole budget fails with ErrTooLarge, as soon as its size is known.
// Neither is kept.
package cachefs
