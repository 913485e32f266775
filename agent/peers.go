package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/gossip"
	"github.com/hearth-gpu/hearth/proto"
)

// peerStall is how long a peer may send nothing before the transfer is
// given up and the chunk fetched elsewhere.
const peerStall = 10 * time.Second

// peerPool is the agent's part in the gossip pool: it publishes what the
// cache holds, and is the cachefs.Peers a fetch asks before the origin,
// reading from other hosts' blob servers.
type peerPool struct {
	a    *Agent
	pool *gossip.Pool
	http *http.Client
}

// startGossip joins the pool when the config asks for it. Joining goes on
// in the background: a host whose seeds are down still runs jobs from the
// origin, and fetches from peers once it gets in.
func (a *Agent) startGossip() error {
	if a.cfg.Gossip == nil || a.cfg.Gossip.BindAddr == "" {
		return nil
	}
	gc := *a.cfg.Gossip
	gc.NodeName, gc.Role = a.cfg.HostID, gossip.RoleAgent
	gc.APIAddr, gc.BlobAddr, gc.Labels = a.cfg.Addr, a.cfg.Addr, a.cfg.Labels
	gc.Logger = a.log
	seeds := gc.Join
	gc.Join = nil
	pool, err := gossip.New(&gc)
	if err != nil {
		return fmt.Errorf("agent: gossip: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	tr.ResponseHeaderTimeout = peerStall
	tr.DisableCompression = true // blobs are verified bytes, not text
	a.peers = &peerPool{a: a, pool: pool, http: &http.Client{Transport: tr}}
	a.publishInventory()
	if a.cfg.PeerToken != "" {
		a.cache.SetPeers(a.peers)
	} else {
		a.log.Warn("in the gossip pool without a peer token: this host neither fetches models from peers nor serves them; set the pool's peer token")
	}
	if len(seeds) > 0 {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if _, err := pool.Join(a.ctx, seeds); err != nil && a.ctx.Err() == nil {
				a.log.Error("not in the gossip pool: models come from the origin only", "err", err)
			}
		}()
	}
	return nil
}

func (a *Agent) closeGossip() error {
	if a.peers == nil {
		return nil
	}
	if err := a.peers.pool.Leave(2 * time.Second); err != nil {
		a.log.Debug("gossip leave", "err", err)
	}
	return a.peers.pool.Close()
}

// publishInventory hands the pool the cache's whole inventory; the pool
// broadcasts only what changed since the last call.
func (a *Agent) publishInventory() {
	if a.peers == nil {
		return
	}
	inv := gossip.Inventory{Chunks: a.cache.Partials()}
	for _, bi := range a.cache.List() {
		inv.Disk = append(inv.Disk, bi.Digest)
		if a.ram != nil && a.ram.Has(bi.Digest) {
			inv.RAM = append(inv.RAM, bi.Digest)
		}
	}
	if err := a.peers.pool.SetInventory(inv); err != nil {
		a.log.Warn("cannot publish the cache inventory", "err", err)
	}
}

// published tells the pool at once that d is now whole in tier, rather than
// at the next heartbeat's inventory.
func (a *Agent) published(d proto.Digest, tier proto.Tier) {
	if a.peers == nil {
		return
	}
	if err := a.peers.pool.Added(d, tier); err != nil {
		a.log.Debug("gossip publish", "blob", d.Short(), "err", err)
	}
}

func (p *peerPool) Self() string { return p.a.cfg.HostID }

// Holders lists the agents that hold d, with their distance: the same rack
// label, then the same zone label, then the rest.
func (p *peerPool) Holders(d proto.Digest) []cachefs.PeerHolder {
	hs := p.pool.Holders(d)
	out := make([]cachefs.PeerHolder, 0, len(hs))
	mine := p.a.cfg.Labels
	for _, h := range hs {
		m := h.Member
		if m.Role != gossip.RoleAgent || m.BlobAddr == "" {
			continue
		}
		dist := 2
		switch {
		case mine["rack"] != "" && m.Labels["rack"] == mine["rack"] && m.Labels["zone"] == mine["zone"]:
			dist = 0
		case mine["zone"] != "" && m.Labels["zone"] == mine["zone"]:
			dist = 1
		}
		out = append(out, cachefs.PeerHolder{Name: m.Name, Whole: h.Tier != "", Chunks: h.Chunks, Distance: dist})
	}
	return out
}

// OpenRange asks peer's blob server for bytes [off, off+n) of d.
func (p *peerPool) OpenRange(ctx context.Context, peer string, d proto.Digest, off, n int64) (io.ReadCloser, error) {
	addr := ""
	for _, m := range p.pool.Members() {
		if m.Name == peer && m.State == gossip.StateAlive {
			addr = m.BlobAddr
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("agent: peer %s is not an alive member of the pool", peer)
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/blobs/"+string(d), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+p.a.cfg.PeerToken)
	req.Header.Set(PeerHeader, p.a.cfg.HostID)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := p.http.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("agent: peer %s: %w", peer, err)
	}
	if resp.StatusCode != http.StatusPartialContent && !(resp.StatusCode == http.StatusOK && off == 0) {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("agent: peer %s answered %s for %s bytes %d+%d: %s", peer, resp.Status, d.Short(), off, n, msg)
	}
	timer := time.AfterFunc(peerStall, cancel)
	return &peerBody{body: resp.Body, timer: timer, cancel: cancel}, nil
}

// peerBody gives up on a peer that stops sending for peerStall.
type peerBody struct {
	body   io.ReadCloser
	timer  *time.Timer
	cancel context.CancelFunc
}

func (b *peerBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.timer.Reset(peerStall)
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, context.Canceled) {
		err = fmt.Errorf("agent: peer transfer broke off: %w", err)
	}
	return n, err
}

func (b *peerBody) Close() error {
	b.timer.Stop()
	b.cancel()
	return b.body.Close()
}

func (p *peerPool) Announce(d proto.Digest, chunks []int) {
	if err := p.pool.ChunksHave(d, chunks); err != nil {
		p.a.log.Debug("gossip publish chunks", "blob", d.Short(), "err", err)
	}
}

func (p *peerPool) Finished(d proto.Digest, ok bool) {
	var err error
	if ok {
		err = p.pool.Added(d, proto.TierDisk)
	} else {
		err = p.pool.Evicted(d, proto.TierDisk) // withdraws the download
	}
	if err != nil {
		p.a.log.Debug("gossip publish", "blob", d.Short(), "err", err)
	}
}

// FetchModel brings m into this host's cache as a job placed here would:
// from peers first when the host is in a gossip pool, then the origin. It
// is how a host is warmed ahead of the jobs that will need a model.
func (a *Agent) FetchModel(ctx context.Context, m proto.ModelRef) (cachefs.FetchSource, error) {
	_, src, err := a.cache.FetchBlob(ctx, cachefs.BlobOf(m, a.origin))
	return src, err
}

// GossipMembers returns the pool's members as this host sees them, or nil
// outside a pool.
func (a *Agent) GossipMembers() []gossip.Member {
	if a.peers == nil {
		return nil
	}
	return a.peers.pool.Members()
}

// PeersHolding names the other hosts of the pool that hold d, whole or in
// part, as far as this host knows.
func (a *Agent) PeersHolding(d proto.Digest) []string {
	if a.peers == nil {
		return nil
	}
	var out []string
	for _, h := range a.peers.Holders(d) {
		out = append(out, h.Name)
	}
	return out
}

// GossipAddr is the address other members join this host's pool at, or ""
// outside a pool.
func (a *Agent) GossipAddr() string {
	if a.peers == nil {
		return ""
	}
	return a.peers.pool.LocalNode().Addr
}
