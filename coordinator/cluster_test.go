package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// testCluster is n coordinators in this process with real HTTP listeners
// and Raft logs on disk. With inmem set their Raft traffic goes through
// raft's in-memory transport, which a test can cut to make partitions;
// otherwise it is TCP on loopback.
type testCluster struct {
	t      *testing.T
	cfgs   []Config
	nodes  []*Server
	inmem  []*raft.InmemTransport
	api    []*client.Client
	closed []bool
}

func startTestCluster(t *testing.T, n int, inmem bool, edit func(*Config)) *testCluster {
	t.Helper()
	tc := &testCluster{t: t, closed: make([]bool, n)}
	var peers []Peer
	for i := range n {
		cfg := DefaultConfig()
		cfg.NodeID = fmt.Sprintf("c%d", i+1)
		cfg.DataDir = t.TempDir()
		cfg.HTTPAddr = freeAddr(t)
		cfg.RaftAddr = freeAddr(t)
		cfg.RaftFastTimeouts = true
		cfg.RaftLogLevel = "off"
		cfg.SchedulerInterval = 50 * time.Millisecond
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if inmem {
			addr, tr := raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))
			cfg.RaftAddr = string(addr)
			cfg.Transport = tr
			tc.inmem = append(tc.inmem, tr)
		}
		if edit != nil {
			edit(&cfg)
		}
		peers = append(peers, Peer{ID: cfg.NodeID, RaftAddr: cfg.RaftAddr})
		tc.cfgs = append(tc.cfgs, cfg)
	}
	for i := range tc.inmem {
		for j := range tc.inmem {
			if i != j {
				tc.inmem[i].Connect(tc.inmem[j].LocalAddr(), tc.inmem[j])
			}
		}
	}
	for i := range tc.cfgs {
		tc.cfgs[i].Peers = peers
		tc.start(i)
	}
	t.Cleanup(tc.closeAll)
	return tc
}

// freeAddr returns a loopback address with a port that was free a moment
// ago (Peers must name Raft addresses before the nodes start).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	s, err := New(tc.cfgs[i])
	if err != nil {
		tc.t.Fatalf("start %s: %v", tc.cfgs[i].NodeID, err)
	}
	if len(tc.nodes) <= i {
		tc.nodes = append(tc.nodes, s)
		tc.api = append(tc.api, client.New(s.URL(), nil))
	} else {
		tc.nodes[i] = s
	}
	tc.closed[i] = false
}

func (tc *testCluster) stop(i int) {
	if !tc.closed[i] {
		tc.closed[i] = true
		if err := tc.nodes[i].Close(); err != nil {
			tc.t.Logf("close %s: %v", tc.cfgs[i].NodeID, err)
		}
	}
}

func (tc *testCluster) closeAll() {
	for i := range tc.nodes {
		tc.stop(i)
	}
}

// leader waits for one of the nodes in among (all when nil) to lead and
// have applied the log, and returns its index.
func (tc *testCluster) leader(among []int) int {
	tc.t.Helper()
	if among == nil {
		for i := range tc.nodes {
			among = append(among, i)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, i := range among {
			if !tc.closed[i] && tc.nodes[i].IsLeader() && tc.nodes[i].leaderReady.Load() {
				if _, ok := tc.nodes[i].FSM().Coordinator(tc.cfgs[i].NodeID); ok {
					return i
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatalf("no leader among nodes %v", among)
	return -1
}

// isolate cuts node i's Raft traffic to and from every other node.
func (tc *testCluster) isolate(i int) {
	for j := range tc.inmem {
		if j != i {
			tc.inmem[i].Disconnect(tc.inmem[j].LocalAddr())
			tc.inmem[j].Disconnect(tc.inmem[i].LocalAddr())
		}
	}
}

// heal reconnects every node to every other.
func (tc *testCluster) heal() {
	for i := range tc.inmem {
		for j := range tc.inmem {
			if i != j {
				tc.inmem[i].Connect(tc.inmem[j].LocalAddr(), tc.inmem[j])
			}
		}
	}
}

// jobIDs returns the ids of every job in node i's FSM.
func (tc *testCluster) jobIDs(i int) []string {
	var ids []string
	for _, j := range tc.nodes[i].FSM().Jobs(JobFilter{}) {
		ids = append(ids, j.ID)
	}
	return ids
}

// waitConverged waits until every running node has applied the same index
// and holds the same jobs.
func (tc *testCluster) waitConverged() {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var first []string
		same := true
		var idx []uint64
		for i := range tc.nodes {
			if tc.closed[i] {
				continue
			}
			idx = append(idx, tc.nodes[i].FSM().Index())
			ids := tc.jobIDs(i)
			if first == nil {
				first = ids
			} else if !slices.Equal(first, ids) {
				same = false
			}
		}
		if same && slices.Min(idx) == slices.Max(idx) {
			return
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("nodes did not converge: applied indexes %v", idx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func submitExec(ctx context.Context, api *client.Client, key string) (*proto.Job, error) {
	spec := &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}}
	j, _, err := api.Submit(ctx, spec, client.SubmitOptions{IdempotencyKey: key})
	return j, err
}

func TestClusterFollowerForwardsWrites(t *testing.T) {
	tc := startTestCluster(t, 3, false, nil)
	l := tc.leader(nil)
	f := (l + 1) % 3
	ctx := context.Background()
	j, err := submitExec(ctx, tc.api[f], "")
	if err != nil {
		t.Fatalf("submit through follower %s: %v", tc.cfgs[f].NodeID, err)
	}
	got, err := tc.api[f].Job(ctx, j.ID)
	if err != nil || got.ID != j.ID {
		t.Fatalf("read through follower: %v %+v", err, got)
	}
	// An operator's drain through a follower lands in the leader's state.
	if err := tc.api[f].Register(ctx, proto.Host{ID: "h1", GPUs: twoSlotGPU}); err != nil {
		t.Fatal(err)
	}
	if v, err := tc.api[f].DrainHost(ctx, "h1", true); err != nil || !v.Drain {
		t.Fatalf("drain through follower: %+v, %v", v, err)
	}
	if h, ok := tc.nodes[l].FSM().Host("h1"); !ok || !h.Drain {
		t.Fatalf("leader's record of h1 after a drain through a follower: %+v", h)
	}
	// A stale read is served by the follower itself, from what it applied.
	tc.waitConverged()
	var stale proto.Job
	if _, err := tc.api[f].Do(ctx, "GET", "/v1/jobs/"+j.ID+"?stale", nil, &stale); err != nil || stale.ID != j.ID {
		t.Fatalf("stale read: %v", err)
	}
	var st ClusterStatus
	if _, err := tc.api[f].Do(ctx, "GET", "/v1/cluster", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Leader.ID != tc.cfgs[l].NodeID || st.Leader.HTTPAddr != tc.nodes[l].HTTPAddr() || len(st.Voters) != 3 {
		t.Fatalf("cluster status from follower: %+v", st)
	}
}

// TestPartition cuts Raft traffic (the in-memory transport) around one
// node at a time: a minority answers writes with 503 and, where it knew a
// leader, a hint; the majority goes on; after healing every node holds the
// same jobs.
func TestPartition(t *testing.T) {
	tc := startTestCluster(t, 3, true, nil)
	ctx := context.Background()
	l := tc.leader(nil)
	f := (l + 1) % 3
	// The hint names the leader's HTTP address, which a node learns from the
	// leader's SetCoordinator entry: cut the follower off only once it has it.
	waitFor(t, "the follower to learn the leader's HTTP address", func() bool {
		co, ok := tc.nodes[f].fsm.Coordinator(tc.nodes[l].cfg.NodeID)
		return ok && co.HTTPAddr == tc.nodes[l].HTTPAddr()
	})

	// A follower cut off from the others loses its leader and refuses
	// writes rather than forwarding them.
	tc.isolate(f)
	var accepted []string
	var minorityErr *client.Error
	// Until its election timer fires the follower still knows the leader
	// and forwards over HTTP (which this test leaves up): those writes are
	// accepted by the majority and must survive like any other.
	refuses := func(i int) func() bool {
		return func() bool {
			j, err := submitExec(ctx, tc.api[i], "")
			if err == nil {
				accepted = append(accepted, j.ID)
			}
			return errors.As(err, &minorityErr) && minorityErr.Status == 503
		}
	}
	waitFor(t, "the isolated follower to refuse writes", refuses(f))
	if minorityErr.Leader != tc.nodes[l].HTTPAddr() {
		t.Errorf("minority's leader hint = %q, want %s (%+v)", minorityErr.Leader, tc.nodes[l].HTTPAddr(), minorityErr)
	}
	for i := range 5 {
		j, err := submitExec(ctx, tc.api[l], fmt.Sprintf("maj-%d", i))
		if err != nil {
			t.Fatalf("majority write %d: %v", i, err)
		}
		accepted = append(accepted, j.ID)
	}
	tc.heal()
	tc.waitConverged()

	// Now cut off the leader: it steps down, the other two elect a leader
	// and carry on.
	l = tc.leader(nil)
	tc.isolate(l)
	waitFor(t, "the isolated leader to refuse writes", refuses(l))
	var rest []int
	for i := range 3 {
		if i != l {
			rest = append(rest, i)
		}
	}
	nl := tc.leader(rest)
	for i := range 5 {
		j, err := submitExec(ctx, tc.api[nl], fmt.Sprintf("maj2-%d", i))
		if err != nil {
			t.Fatalf("write to new leader %s: %v", tc.cfgs[nl].NodeID, err)
		}
		accepted = append(accepted, j.ID)
	}
	tc.heal()
	tc.waitConverged()
	for i := range 3 {
		ids := tc.jobIDs(i)
		for _, id := range accepted {
			if !slices.Contains(ids, id) {
				t.Errorf("node %s lacks accepted job %s", tc.cfgs[i].NodeID, id)
			}
		}
		if len(ids) != len(accepted) {
			t.Errorf("node %s holds %d jobs, want %d (the minority must not have accepted any)", tc.cfgs[i].NodeID, len(ids), len(accepted))
		}
	}
}

// TestClusterRestartAll stops every node and starts them again on the same
// data dirs: the jobs come back, a leader is elected, writes resume.
func TestClusterRestartAll(t *testing.T) {
	tc := startTestCluster(t, 3, false, nil)
	ctx := context.Background()
	l := tc.leader(nil)
	var ids []string
	for i := range 20 {
		j, err := submitExec(ctx, tc.api[(l+i)%3], fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	tc.waitConverged()
	tc.closeAll()
	for i := range 3 {
		tc.start(i)
	}
	l = tc.leader(nil)
	tc.waitConverged()
	for i := range 3 {
		if got := tc.jobIDs(i); !slices.Equal(got, ids) {
			t.Fatalf("node %d after restart holds %d jobs, want %d", i, len(got), len(ids))
		}
	}
	// The idempotency keys survived too.
	j, err := submitExec(ctx, tc.api[(l+1)%3], "k3")
	if err != nil || j.ID != ids[3] {
		t.Fatalf("resubmit with key k3 after restart: %v, job %s, want %s", err, j.ID, ids[3])
	}
}

// TestClusterDiscovery forms a group with --bootstrap-expect and --join,
// then adds a fourth node with --join only, then removes it.
func TestClusterDiscovery(t *testing.T) {
	var cfgs []Config
	var urls []string
	for i := range 3 {
		cfg := DefaultConfig()
		cfg.NodeID = fmt.Sprintf("d%d", i+1)
		cfg.DataDir = t.TempDir()
		cfg.HTTPAddr, cfg.RaftAddr = freeAddr(t), freeAddr(t)
		cfg.RaftFastTimeouts, cfg.RaftLogLevel = true, "off"
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfgs = append(cfgs, cfg)
		urls = append(urls, "http://"+cfg.HTTPAddr)
	}
	var nodes []*Server
	for i := range cfgs {
		cfgs[i].BootstrapExpect = 3
		cfgs[i].Join = slices.Delete(slices.Clone(urls), i, i+1)
		s, err := New(cfgs[i])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		nodes = append(nodes, s)
	}
	api := client.New(urls[0], nil)
	waitFor(t, "a 3-voter group with a leader", func() bool {
		var st ClusterStatus
		_, err := api.Do(context.Background(), "GET", "/v1/cluster", nil, &st)
		return err == nil && st.Leader.ID != "" && len(st.Voters) == 3
	})
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir = "d4", t.TempDir()
	cfg.HTTPAddr, cfg.RaftAddr = freeAddr(t), freeAddr(t)
	cfg.RaftFastTimeouts, cfg.RaftLogLevel = true, "off"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Join = []string{urls[1]}
	s4, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s4.Close() })
	waitFor(t, "d4 to join", func() bool { return s4.inConfiguration() })
	if _, err := submitExec(context.Background(), client.New(s4.URL(), nil), ""); err != nil {
		t.Fatalf("submit through the joined node: %v", err)
	}
	var st ClusterStatus
	if _, err := api.Do(context.Background(), "POST", "/v1/operator/raft/remove-peer", map[string]string{"id": "d4"}, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Voters) != 3 || slices.ContainsFunc(st.Voters, func(m ClusterMember) bool { return m.ID == "d4" }) {
		t.Fatalf("after remove-peer: %+v", st.Voters)
	}
	_, err = api.Do(context.Background(), "POST", "/v1/operator/raft/remove-peer", map[string]string{"id": "nope"}, nil)
	if !client.IsCode(err, "peer_not_found") {
		t.Fatalf("removing an unknown peer: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
