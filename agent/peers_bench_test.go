package agent_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/proto"
)

func benchSize(def int) int {
	if v, err := strconv.Atoi(os.Getenv("HEARTH_BENCH_PEER_MIB")); err == nil && v > 0 {
		return v << 20
	}
	return def
}

// rawTCPCopy copies the file at path over loopback TCP, into nothing when
// dst is "", else into a new file at dst, written and fsynced as the cache
// writes a blob: the wire alone, and the wire plus this disk.
func rawTCPCopy(b *testing.B, path, dst string) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		f, err := os.Open(path)
		if err != nil {
			return
		}
		defer f.Close()
		io.Copy(c, f)
	}()
	start := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var w io.Writer = io.Discard
	var out *os.File
	if dst != "" {
		if out, err = os.Create(dst); err != nil {
			b.Fatal(err)
		}
		defer os.Remove(dst)
		defer out.Close()
		w = out
	}
	n, err := io.CopyBuffer(w, c, make([]byte, 8<<20))
	if err == nil && out != nil {
		err = out.Sync()
	}
	if err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkPeerTransfer: one host fetches a model from another over the
// peer blob server (chunks hashed, written, synced, the whole verified),
// beside a raw TCP copy of the same file between the same loopback ends.
func BenchmarkPeerTransfer(b *testing.B) {
	m, origin := bigModel(b, benchSize(512<<20), 8<<20)
	path := filepath.Join(origin.Root(), m.Origin)
	for range b.N {
		agents := startPool(b, 2, origin, nil)
		if _, err := agents[0].FetchModel(context.Background(), m); err != nil {
			b.Fatal(err)
		}
		for len(agents[1].PeersHolding(m.Digest)) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		tcp := rawTCPCopy(b, path, "")
		tcpDisk := rawTCPCopy(b, path, filepath.Join(b.TempDir(), "copy"))
		start := time.Now()
		src, err := agents[1].FetchModel(context.Background(), m)
		if err != nil || src.Peer != m.Size {
			b.Fatalf("fetch = %+v, %v; want every byte from the peer", src, err)
		}
		peer := float64(m.Size) / time.Since(start).Seconds()
		b.Logf("%d MiB: peer fetch %.2f GB/s; raw TCP copy %.2f GB/s (%.0f%%); raw TCP copy into an fsynced file %.2f GB/s (%.0f%%)",
			m.Size>>20, peer/1e9, tcp/1e9, 100*peer/tcp, tcpDisk/1e9, 100*peer/tcpDisk)
		b.ReportMetric(peer/1e9, "peer_GB/s")
		b.ReportMetric(tcp/1e9, "tcp_GB/s")
		b.ReportMetric(tcpDisk/1e9, "tcp_disk_GB/s")
		for _, a := range agents {
			a.Close()
		}
	}
}

// BenchmarkFanOut: eight hosts need one model at once, in one pool and, as
// the baseline, each on its own from the origin.
func BenchmarkFanOut(b *testing.B) {
	m, origin := bigModel(b, benchSize(256<<20), proto.ChunkSizeFor(int64(benchSize(256<<20))))
	run := func(agents []*agent.Agent) (time.Duration, int64) {
		before := origin.served.Load()
		start := time.Now()
		var wg sync.WaitGroup
		for _, a := range agents {
			wg.Go(func() {
				if _, err := a.FetchModel(context.Background(), m); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		return time.Since(start), origin.served.Load() - before
	}
	for range b.N {
		pooled := startPool(b, 8, origin, nil)
		tp, op := run(pooled)
		alone := startPool(b, 8, origin, func(i int, c *agent.Config) { c.Gossip = nil })
		ta, oa := run(alone)
		b.Logf("8 hosts, %d MiB: pool %s, origin served %.2f copies; independent pulls %s, origin served %.2f copies",
			m.Size>>20, tp.Round(time.Millisecond), float64(op)/float64(m.Size), ta.Round(time.Millisecond), float64(oa)/float64(m.Size))
		b.ReportMetric(tp.Seconds(), "pool_s")
		b.ReportMetric(ta.Seconds(), "alone_s")
		for _, a := range append(pooled, alone...) {
			a.Close()
		}
	}
}
