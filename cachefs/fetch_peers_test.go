package cachefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// hostPool stands in for the gossip pool and the peer blob server in these
// tests: each "host" is a real Store in its own directory, and a peer's
// bytes are read from that Store's blob or partial download, as the agent's
// blob server reads them. Faults are injected per host. The agent's tests
// run the same fetches over real gossip and HTTP.
type hostPool struct {
	mu      sync.Mutex
	stores  map[string]*Store
	dead    map[string]bool
	corrupt map[string]bool
	// dieAfter makes a host break off, and stay dead, once it has sent
	// this many bytes.
	dieAfter map[string]int64
	sent     map[string]int64
}

func newHostPool() *hostPool {
	return &hostPool{stores: map[string]*Store{}, dead: map[string]bool{}, corrupt: map[string]bool{},
		dieAfter: map[string]int64{}, sent: map[string]int64{}}
}

func (hp *hostPool) add(t *testing.T, name string) *Store {
	t.Helper()
	s, err := Open(Config{
		Dir:          t.TempDir(),
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With("host", name),
		FetchBackoff: time.Millisecond,
		PeerParallel: 4,
		PeerSettle:   100 * time.Millisecond,
		PeerStall:    400 * time.Millisecond,
		PeerAvoid:    time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	s.SetPeers(hostView{hp, name})
	hp.mu.Lock()
	hp.stores[name] = s
	hp.mu.Unlock()
	return s
}

type hostView struct {
	hp   *hostPool
	self string
}

func (v hostView) Self() string { return v.self }

func (v hostView) Holders(d proto.Digest) []PeerHolder {
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	var out []PeerHolder
	for name, s := range v.hp.stores {
		if name == v.self || v.hp.dead[name] {
			continue
		}
		if s.Has(d) {
			out = append(out, PeerHolder{Name: name, Whole: true, Distance: 1})
		} else if idx, ok := s.Partials()[d]; ok {
			out = append(out, PeerHolder{Name: name, Chunks: idx, Distance: 1})
		}
	}
	return out
}

func (v hostView) OpenRange(ctx context.Context, peer string, d proto.Digest, off, n int64) (io.ReadCloser, error) {
	hp := v.hp
	hp.mu.Lock()
	s, dead, corrupt := hp.stores[peer], hp.dead[peer], hp.corrupt[peer]
	hp.mu.Unlock()
	if s == nil || dead {
		return nil, fmt.Errorf("peer %s: connection refused", peer)
	}
	var f *os.File
	var err error
	if p, ok := s.Path(d); ok {
		f, err = os.Open(p)
	} else {
		f, err = s.OpenPartial(d, off, n)
	}
	if err != nil {
		return nil, fmt.Errorf("peer %s: 404: %w", peer, err)
	}
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	f.Close()
	if err != nil {
		return nil, err
	}
	if corrupt {
		b[len(b)/2] ^= 0x01
	}
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if limit, ok := hp.dieAfter[peer]; ok && hp.sent[peer]+n > limit {
		hp.dead[peer] = true
		return io.NopCloser(io.MultiReader(bytes.NewReader(b[:n/2]), errReader{})), nil
	}
	hp.sent[peer] += n
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (v hostView) Announce(proto.Digest, []int) {}
func (v hostView) Finished(proto.Digest, bool)  {}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

// rangeCountingOrigin is a real DirOrigin that counts the bytes it serves.
type rangeCountingOrigin struct {
	*DirOrigin
	served atomic.Int64
}

func (o *rangeCountingOrigin) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	rc, size, err := o.DirOrigin.Open(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return &countedBody{rc, &o.served}, size, nil
}

func (o *rangeCountingOrigin) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := o.DirOrigin.OpenRange(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	return &countedBody{rc, &o.served}, nil
}

type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countedBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// chunkedBlob makes a blob of size bytes in chunks of chunkSize, with an
// origin that holds it.
func chunkedBlob(t *testing.T, size int, chunkSize int64, seed uint64) ([]byte, Blob, *rangeCountingOrigin) {
	t.Helper()
	const key = "checkpoints/big.safetensors"
	data, d := testBlob(size, seed)
	_, whole, chunks, err := proto.HashChunked(bytes.NewReader(data), chunkSize)
	if err != nil || whole != d {
		t.Fatalf("HashChunked = %s, %v; want %s", whole, err, d)
	}
	o := &rangeCountingOrigin{DirOrigin: newTestOrigin(t, key, data)}
	return data, Blob{Digest: d, Size: int64(size), ChunkSize: chunkSize, Chunks: chunks, Origin: o, Key: key}, o
}

func assertBlob(t *testing.T, s *Store, b Blob, data []byte) {
	t.Helper()
	p, ok := s.Path(b.Digest)
	if !ok {
		t.Fatalf("blob %s is not cached", b.Digest.Short())
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cached blob differs from the origin's (%d bytes, err %v)", len(got), err)
	}
	assertNoTemp(t, s)
}

func TestFetchChunksFromAPeer(t *testing.T) {
	data, b, o := chunkedBlob(t, 5<<20+123, 1<<20, 1)
	hp := newHostPool()
	a, c := hp.add(t, "a"), hp.add(t, "c")
	mustPut(t, a, data, b.Digest)

	_, src, err := c.FetchBlob(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	assertBlob(t, c, b, data)
	if src.Peer != b.Size || src.Origin != 0 || o.served.Load() != 0 {
		t.Fatalf("source = %+v, origin served %d; want every byte from the peer", src, o.served.Load())
	}
}

func TestFetchWithoutChunksCopiesAWholeBlobFromAPeer(t *testing.T) {
	data, b, o := chunkedBlob(t, 3<<20, 1<<20, 2)
	b.ChunkSize, b.Chunks = 0, nil
	hp := newHostPool()
	a, c := hp.add(t, "a"), hp.add(t, "c")
	mustPut(t, a, data, b.Digest)
	if _, src, err := c.FetchBlob(context.Background(), b); err != nil || src.Peer != b.Size || o.served.Load() != 0 {
		t.Fatalf("FetchBlob = %+v, %v (origin served %d); want the whole blob from the peer", src, err, o.served.Load())
	}
	assertBlob(t, c, b, data)
}

func TestFetchRejectsCorruptPeerChunksAndAvoidsThePeer(t *testing.T) {
	data, b, o := chunkedBlob(t, 6<<20, 1<<20, 3)
	hp := newHostPool()
	bad, good, c := hp.add(t, "a-bad"), hp.add(t, "b-good"), hp.add(t, "c")
	mustPut(t, bad, data, b.Digest)
	mustPut(t, good, data, b.Digest)
	hp.corrupt["a-bad"] = true

	_, src, err := c.FetchBlob(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	assertBlob(t, c, b, data)
	if src.Origin != 0 || o.served.Load() != 0 {
		t.Fatalf("origin served %d bytes; the good peer had them all", o.served.Load())
	}
	if !c.avoid.avoided("a-bad", time.Now()) {
		t.Fatal("the peer that sent corrupt chunks is not avoided")
	}
	if c.avoid.avoided("b-good", time.Now()) {
		t.Fatal("the good peer is avoided")
	}
}

func TestFetchFinishesFromOriginWhenThePeerDiesMidTransfer(t *testing.T) {
	data, b, o := chunkedBlob(t, 8<<20, 1<<20, 4)
	hp := newHostPool()
	a, c := hp.add(t, "a"), hp.add(t, "c")
	mustPut(t, a, data, b.Digest)
	hp.dieAfter["a"] = 3 << 20 // three chunks, then it breaks off mid-chunk

	_, src, err := c.FetchBlob(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	assertBlob(t, c, b, data)
	if src.Peer < 3<<20 || src.Peer+src.Origin != b.Size {
		t.Fatalf("source = %+v; want the peer's three chunks and the rest from the origin", src)
	}
	if got := o.served.Load(); got > b.Size-3<<20 {
		t.Fatalf("origin served %d bytes, more than the %d the peer did not send", got, b.Size-3<<20)
	}
}

func TestFetchTakesChunksNoPeerHasFromTheOrigin(t *testing.T) {
	data, b, o := chunkedBlob(t, 4<<20, 1<<20, 5)
	hp := newHostPool()
	c := hp.add(t, "c")
	_, src, err := c.FetchBlob(context.Background(), b)
	if err != nil {
		t.Fatal(err)
	}
	assertBlob(t, c, b, data)
	if src.Origin != b.Size || o.served.Load() != b.Size {
		t.Fatalf("source = %+v, origin served %d; want it all from the origin, once", src, o.served.Load())
	}
}

func TestFetchWithAWrongChunkListFailsAndCachesNothing(t *testing.T) {
	_, b, _ := chunkedBlob(t, 3<<20, 1<<20, 6)
	_, other, _ := chunkedBlob(t, 3<<20, 1<<20, 7)
	b.Chunks = other.Chunks // a catalog whose chunks belong to other bytes
	hp := newHostPool()
	c := hp.add(t, "c")
	_, _, err := c.FetchBlob(context.Background(), b)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("FetchBlob with a wrong chunk list = %v, want ErrDigestMismatch", err)
	}
	if c.Has(b.Digest) {
		t.Fatal("a blob that never verified is cached")
	}
	assertNoTemp(t, c)
}

// TestFanOutReadsTheOriginOnce has ten hosts want one blob at the same
// moment: they split the origin's chunks and trade the rest, so the origin
// serves the blob about once, not ten times.
func TestFanOutReadsTheOriginOnce(t *testing.T) {
	data, b, o := chunkedBlob(t, 24<<20, 1<<20, 8)
	hp := newHostPool()
	var hosts []*Store
	for i := range 10 {
		hosts = append(hosts, hp.add(t, fmt.Sprintf("host-%02d", i)))
	}
	var wg sync.WaitGroup
	errs := make([]error, len(hosts))
	for i, s := range hosts {
		wg.Go(func() { _, _, errs[i] = s.FetchBlob(context.Background(), b) })
	}
	wg.Wait()
	for i, s := range hosts {
		if errs[i] != nil {
			t.Fatalf("host %d: %v", i, errs[i])
		}
		assertBlob(t, s, b, data)
	}
	served := o.served.Load()
	t.Logf("10 hosts, %d-byte blob: origin served %d bytes (%.2f copies)", b.Size, served, float64(served)/float64(b.Size))
	if float64(served) > 1.1*float64(b.Size) {
		t.Fatalf("origin served %d bytes, %.2f copies; want at most 1.1", served, float64(served)/float64(b.Size))
	}
}
