package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/gossip"
	"github.com/hearth-gpu/hearth/proto"
)

// servingOrigin is a real directory origin that counts the bytes it
// serves, so a test can tell how many copies of a model left the origin.
type servingOrigin struct {
	*cachefs.DirOrigin
	served atomic.Int64
}

func (o *servingOrigin) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	rc, n, err := o.DirOrigin.Open(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return countingBody{rc, &o.served}, n, nil
}

func (o *servingOrigin) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := o.DirOrigin.OpenRange(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	return countingBody{rc, &o.served}, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// bigModel writes a model of size bytes into a new origin and returns its
// catalog reference, chunked as `hearth model push` would with chunkSize.
func bigModel(t testing.TB, size int, chunkSize int64) (proto.ModelRef, *servingOrigin) {
	t.Helper()
	dir := t.TempDir()
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(size), 7}).Read(data)
	const key = "checkpoints/fanout.safetensors"
	if err := os.MkdirAll(filepath.Join(dir, "checkpoints"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, key), data, 0o644); err != nil {
		t.Fatal(err)
	}
	n, d, chunks, err := proto.HashChunked(bytes.NewReader(data), chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	do, err := cachefs.NewDirOrigin(dir)
	if err != nil {
		t.Fatal(err)
	}
	return proto.ModelRef{Name: key, Digest: d, Size: n, Origin: key, ChunkSize: chunkSize, Chunks: chunks}, &servingOrigin{DirOrigin: do}
}

// startPool starts n agents in this process, all in one gossip pool on
// 127.0.0.1 with the same peer token, and waits until each sees all.
func startPool(t testing.TB, n int, origin cachefs.Origin, edit func(i int, c *agent.Config)) []*agent.Agent {
	t.Helper()
	coord := startCoordinator(t, freeAddr(t), t.TempDir())
	var agents []*agent.Agent
	for i := range n {
		cfg := agentConfig(t, "http://"+coord.HTTPAddr(), "")
		cfg.HostID = fmt.Sprintf("h-%02d", i)
		cfg.Origin, cfg.PeerToken = origin, "pool-secret"
		cfg.HTTPAddr, cfg.Addr = "127.0.0.1:0", ""
		cfg.Gossip = &gossip.Config{BindAddr: "127.0.0.1:0", Label: "test", JoinTimeout: 10 * time.Second,
			GossipInterval: 20 * time.Millisecond, ProbeInterval: 200 * time.Millisecond, PushPullInterval: time.Second}
		if i > 0 {
			cfg.Gossip.Join = []string{agents[0].GossipAddr()}
		}
		if edit != nil {
			edit(i, &cfg)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		a, err := agent.New(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		t.Cleanup(func() { a.Close() })
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range agents {
		for a.GossipAddr() != "" && alive(a.GossipMembers()) < n {
			if time.Now().After(deadline) {
				t.Fatalf("an agent sees %d of %d members alive", alive(a.GossipMembers()), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return agents
}

func alive(ms []gossip.Member) int {
	n := 0
	for _, m := range ms {
		if m.State == gossip.StateAlive {
			n++
		}
	}
	return n
}

// assertVerified checks the host's cached copy hashes to the model's digest.
func assertVerified(t *testing.T, a *agent.Agent, m proto.ModelRef) {
	t.Helper()
	src, err := a.FetchModel(context.Background(), m) // a hit: returns the cached path's source
	if err != nil || src.Fetched() {
		t.Fatalf("model not cached after its fetch: fetched again = %v, err %v", src.Fetched(), err)
	}
}

// TestTenHostsFetchOneModelAtOnce: ten hosts need the same model at the
// same moment. Over real gossip and the real blob servers they split the
// origin's chunks and trade the rest, so the origin serves about one copy.
func TestTenHostsFetchOneModelAtOnce(t *testing.T) {
	m, origin := bigModel(t, 48<<20, 1<<20)
	// Generous settle and stall times: the count below is about the split,
	// not about how a host loaded by nine others keeps up (the stall path
	// has its own test).
	agents := startPool(t, 10, origin, func(_ int, c *agent.Config) { c.PeerSettle, c.PeerStall = 2*time.Second, time.Minute })

	var wg sync.WaitGroup
	srcs := make([]cachefs.FetchSource, len(agents))
	errs := make([]error, len(agents))
	for i, a := range agents {
		wg.Go(func() { srcs[i], errs[i] = a.FetchModel(context.Background(), m) })
	}
	wg.Wait()
	var fromPeers int64
	for i, a := range agents {
		if errs[i] != nil {
			t.Fatalf("host %d: %v", i, errs[i])
		}
		assertVerified(t, a, m)
		fromPeers += srcs[i].Peer
	}
	served := origin.served.Load()
	t.Logf("10 hosts, %d MiB model in %d chunks: origin served %.2f copies, peers %.2f", m.Size>>20, len(m.Chunks),
		float64(served)/float64(m.Size), float64(fromPeers)/float64(m.Size))
	// One copy when every host hears of every other in time; a host that
	// learns late of a puller or of a written chunk reads a few chunks
	// twice (1.15 copies seen with both cores busy). Ten independent pulls
	// would be 10 copies.
	if float64(served) > 1.5*float64(m.Size) {
		t.Fatalf("origin served %d bytes, %.2f copies of the model; want at most 1.5", served, float64(served)/float64(m.Size))
	}
}

// TestPeerDiesMidTransfer: the only peer holding a model goes away while a
// host is reading from it; the host finishes from the origin, with a
// verified copy, and takes from the origin only what the peer had not sent.
func TestPeerDiesMidTransfer(t *testing.T) {
	m, origin := bigModel(t, 32<<20, 1<<20)
	agents := startPool(t, 2, origin, func(i int, c *agent.Config) {
		c.PeerRateBytesPerSec = 8 << 20 // about four seconds for the whole model
	})
	holder, fetcher := agents[0], agents[1]
	if _, err := holder.FetchModel(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	before := origin.served.Load()
	// Wait until the holder's inventory has reached the fetcher.
	deadline := time.Now().Add(10 * time.Second)
	for len(fetcher.PeersHolding(m.Digest)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fetcher never learnt that the holder has the model")
		}
		time.Sleep(20 * time.Millisecond)
	}

	done := make(chan error, 1)
	var src cachefs.FetchSource
	go func() {
		var err error
		src, err = fetcher.FetchModel(context.Background(), m)
		done <- err
	}()
	time.Sleep(time.Second) // some chunks arrive from the peer
	holder.Close()          // the peer dies mid-transfer
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the fetch did not finish after its peer died")
	}
	assertVerified(t, fetcher, m)
	fromOrigin := origin.served.Load() - before
	t.Logf("peer sent %d MiB before it died, origin %d MiB", src.Peer>>20, fromOrigin>>20)
	if src.Peer == 0 || src.Origin == 0 || src.Peer+src.Origin != m.Size {
		t.Fatalf("source = %+v; want part from the peer and the rest from the origin", src)
	}
	if fromOrigin > m.Size-src.Peer {
		t.Fatalf("origin served %d bytes, more than the %d the peer had not sent", fromOrigin, m.Size-src.Peer)
	}
}

// TestGossipMarksALostHostDownBeforeTheHeartbeatGrace: the coordinator is
// in the pool, sees the host there, and marks it down as soon as it leaves,
// long before a minute without heartbeats would.
func TestGossipMarksALostHostDownBeforeTheHeartbeatGrace(t *testing.T) {
	const grace = time.Minute
	coord := startCoordinator(t, freeAddr(t), t.TempDir(), func(c *coordinator.Config) {
		c.HeartbeatGrace = grace
		c.Gossip = &gossip.Config{BindAddr: "127.0.0.1:0", Label: "test", GossipInterval: 20 * time.Millisecond, ProbeInterval: 200 * time.Millisecond}
	})
	t.Cleanup(func() { coord.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	acfg := agentConfig(t, "http://"+coord.HTTPAddr(), t.TempDir())
	acfg.HTTPAddr, acfg.Addr, acfg.PeerToken = "127.0.0.1:0", "", "pool-secret"
	acfg.Gossip = &gossip.Config{BindAddr: "127.0.0.1:0", Label: "test", Join: []string{coord.GossipAddr()},
		GossipInterval: 20 * time.Millisecond, ProbeInterval: 200 * time.Millisecond}
	a, err := agent.New(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	api := client.New("http://"+coord.HTTPAddr(), nil)
	host := func() proto.HostView {
		hosts, err := api.Hosts(ctx)
		if err != nil || len(hosts) != 1 {
			t.Fatalf("hosts = %v, %v; want the one agent", hosts, err)
		}
		return hosts[0]
	}
	for h := host(); h.Gossip != "alive" || h.Status != proto.HostReady || !h.PeerFetch; h = host() {
		if ctx.Err() != nil {
			t.Fatalf("host %+v never listed as ready, alive in gossip, fetching from peers", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	closed := time.Now()
	a.Close()
	for h := host(); h.Status != proto.HostDown; h = host() {
		if ctx.Err() != nil {
			t.Fatalf("host %s still %s (gossip %s) after it left the pool", h.ID, h.Status, h.Gossip)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h := host()
	t.Logf("host marked down %s after it left (heartbeat grace %s): %s; gossip %s", time.Since(closed).Round(time.Millisecond), grace, h.DownReason, h.Gossip)
	if !strings.Contains(h.DownReason, "gossip") {
		t.Fatalf("down reason %q does not name gossip", h.DownReason)
	}
}
