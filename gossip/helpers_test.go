package gossip

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// syncBuffer collects a test's logs; they are printed only if it fails,
// since memberlist goroutines may still log after the test has ended.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t *testing.T) (*slog.Logger, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			s := buf.String()
			if len(s) > 20000 {
				s = "...\n" + s[len(s)-20000:]
			}
			t.Logf("logs:\n%s", s)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// testConfig is a pool on a free port of 127.0.0.1 with fast timers.
func testConfig(t *testing.T, name string) *Config {
	t.Helper()
	log, _ := testLogger(t)
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.SecretKeys = [][]byte{testKey}
	cfg.Label = "test"
	cfg.APIAddr = "127.0.0.1:7710"
	cfg.BlobAddr = "127.0.0.1:7712"
	cfg.Labels = map[string]string{"zone": "z1", "rack": name}
	cfg.Logger = log
	cfg.JoinTimeout = 5 * time.Second
	cfg.ProbeInterval = 100 * time.Millisecond
	cfg.GossipInterval = 20 * time.Millisecond
	cfg.PushPullInterval = 500 * time.Millisecond
	return cfg
}

// startPool starts a pool and closes it when the test ends, pass or fail.
func startPool(t *testing.T, cfg *Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.NodeName, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// startCluster starts n pools, each joining the first.
func startCluster(t *testing.T, n int) []*Pool {
	t.Helper()
	pools := []*Pool{startPool(t, testConfig(t, "n0"))}
	for i := 1; i < n; i++ {
		cfg := testConfig(t, fmt.Sprintf("n%d", i))
		cfg.Join = []string{pools[0].LocalNode().Addr}
		pools = append(pools, startPool(t, cfg))
	}
	for _, p := range pools {
		eventually(t, "every member sees all "+fmt.Sprint(n), func() bool { return countAlive(p) == n })
	}
	return pools
}

func countAlive(p *Pool) int {
	n := 0
	for _, m := range p.Members() {
		if m.State == StateAlive {
			n++
		}
	}
	return n
}

func member(p *Pool, name string) (Member, bool) {
	for _, m := range p.Members() {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// eventually polls cond until it holds, failing after a generous deadline:
// gossip converges in well under a second here, but -race and a loaded
// machine slow it down, and the test asserts the outcome, not the speed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func digest(s string) proto.Digest {
	sum := sha256.Sum256([]byte(s))
	return proto.DigestFromSum(sum[:])
}

func holderNames(hs []Holder) string {
	var names []string
	for _, h := range hs {
		names = append(names, fmt.Sprintf("%s:%s%v", h.Member.Name, h.Tier, h.Chunks))
	}
	return strings.Join(names, ",")
}
