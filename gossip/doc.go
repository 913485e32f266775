// Package gossip will hold the hashicorp/memberlist pool that agents and
// coordinators join: membership and failure detection faster than
// heartbeats, node metadata (role, addresses, rack and zone), and the cache
// inventories that let a host fetch a model from a peer before the origin.
// Nothing uses it yet; the peer-transfer change fills it in.
package gossip
