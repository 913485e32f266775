package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// asHearthEnv makes the test binary run as the hearth command (see
// TestMain), so the cluster tests start real coordinator processes
// without building a separate binary.
const asHearthEnv = "HEARTH_TEST_AS_HEARTH"

// serveIfHearthChild runs the hearth command line when the test binary was
// started as a coordinator process.
func serveIfHearthChild() {
	if os.Getenv(asHearthEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// coordProc is one `hearth coordinator` process.
type coordProc struct {
	id, httpAddr, raftAddr, dataDir, logPath string
	cmd                                      *exec.Cmd
	done                                     chan struct{}
}

func (p *coordProc) url() string { return "http://" + p.httpAddr }

func (p *coordProc) start(t *testing.T, peers string) {
	t.Helper()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"coordinator", "--node-id", p.id, "--data-dir", p.dataDir,
		"--http-addr", p.httpAddr, "--raft-addr", p.raftAddr, "--peers", peers,
		"--heartbeat-grace", "3s", "--log-level", "warn"}
	// Fast Raft timers keep the test short; HEARTH_TEST_RAFT_DEFAULTS=1
	// measures the kill-to-placement time with production timers.
	if os.Getenv("HEARTH_TEST_RAFT_DEFAULTS") != "1" {
		args = append(args, "--raft-fast-timeouts")
	}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Env = append(os.Environ(), asHearthEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func() { p.cmd.Wait(); logf.Close(); close(p.done) }()
}

// kill sends SIGKILL: no shutdown, no flush, as a crash or power loss.
func (p *coordProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// loopbackAddr returns a free port on a 127.0.0.x address.
func loopbackAddr(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type clusterView struct {
	Leader struct {
		ID       string `json:"id"`
		HTTPAddr string `json:"http_addr"`
	} `json:"leader"`
	Voters []struct {
		ID string `json:"id"`
	} `json:"voters"`
}

// TestKillLeaderKeepsEveryAcceptedJob runs three coordinator processes on
// 127.0.0.{11,12,13} with their Raft logs on disk, streams submissions at
// them, and kill -9s the leader: every job that was answered 202 is there
// afterwards, none twice (each submission carries an Idempotency-Key and
// is retried on another node until it gets an answer), a new leader is
// elected, placements resume, and a real agent that knew the dead node
// runs every job to the end. It logs the time from the kill to the new
// leader's first placement.
func TestKillLeaderKeepsEveryAcceptedJob(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three coordinator processes")
	}
	dir := t.TempDir()
	var procs []*coordProc
	var peers []string
	for i := range 3 {
		host := fmt.Sprintf("127.0.0.%d", 11+i)
		p := &coordProc{id: fmt.Sprintf("c%d", i+1), httpAddr: loopbackAddr(t, host), raftAddr: loopbackAddr(t, host),
			dataDir: filepath.Join(dir, fmt.Sprintf("c%d", i+1)), logPath: filepath.Join(dir, fmt.Sprintf("c%d.log", i+1))}
		procs = append(procs, p)
		peers = append(peers, p.id+"="+p.raftAddr)
	}
	for _, p := range procs {
		p.start(t, strings.Join(peers, ","))
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for _, p := range procs {
				b, _ := os.ReadFile(p.logPath)
				t.Logf("--- %s log ---\n%s", p.id, b)
			}
		}
	})
	var urls []string
	for _, p := range procs {
		urls = append(urls, p.url())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	leaderOf := func(among []*coordProc) *coordProc {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			for _, p := range among {
				var v clusterView
				_, err := client.New(p.url(), nil).Do(ctx, "GET", "/v1/cluster", nil, &v)
				if err != nil || v.Leader.HTTPAddr == "" {
					continue
				}
				for _, q := range among {
					if q.id == v.Leader.ID {
						return q
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("no leader elected")
		return nil
	}
	leader := leaderOf(procs)

	// A real agent (simulated GPU) that knows all three nodes and moves on
	// when the one it talks to dies: it registers, heartbeats, long-polls
	// and runs what it is given.
	acfg := agent.DefaultConfig()
	acfg.HostID, acfg.CoordinatorURL = "gpu-host-1", strings.Join(urls, ",")
	acfg.DataDir, acfg.OriginDir = filepath.Join(dir, "agent"), t.TempDir()
	acfg.SimGPUs = []gpu.SimGPU{{Name: "Simulated H200", MemoryBytes: 141 << 30}}
	acfg.MaxSlotsPerGPU = 4
	acfg.HeartbeatInterval, acfg.PollWait = 300*time.Millisecond, 2*time.Second
	acfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ag, err := agent.New(ctx, acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	spec := []byte(`{"exec":{"command":["true"]}}`)

	// Submitters: each submission is retried (same key, any node) until it
	// gets an answer, as a careful client would.
	var mu sync.Mutex
	accepted := map[string]string{} // key → job id
	stopSubmit := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client.New(strings.Join(urls, ","), nil)
			for n := 0; ; n++ {
				select {
				case <-stopSubmit:
					return
				default:
				}
				key := fmt.Sprintf("w%d-%d", w, n)
				for try := 0; ctx.Err() == nil; try++ {
					sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
					j, _, err := c.Submit(sctx, spec, client.SubmitOptions{IdempotencyKey: key})
					scancel()
					if err == nil {
						mu.Lock()
						accepted[key] = j.ID
						mu.Unlock()
						break
					}
					var ce *client.Error
					if errors.As(err, &ce) && ce.Status < 500 {
						t.Errorf("submit %s: %v", key, err)
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	waitAccepted := func(n int) {
		for ctx.Err() == nil {
			mu.Lock()
			got := len(accepted)
			mu.Unlock()
			if got >= n {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitAccepted(200)

	killedAt := time.Now()
	leader.kill()
	var survivors []*coordProc
	for _, p := range procs {
		if p != leader {
			survivors = append(survivors, p)
		}
	}
	newLeader := leaderOf(survivors)
	electedIn := time.Since(killedAt)
	mu.Lock()
	before := len(accepted)
	mu.Unlock()
	waitAccepted(before + 200)
	close(stopSubmit)
	wg.Wait()

	// Read everything back from a survivor.
	sc := client.New(newLeader.url(), nil)
	var jobs []*proto.Job
	q := url.Values{"limit": {"1000"}}
	for {
		l, err := sc.Jobs(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, l.Jobs...)
		if l.Next == "" {
			break
		}
		q.Set("after", l.Next)
	}
	byID := map[string]*proto.Job{}
	byKey := map[string]string{}
	for _, j := range jobs {
		byID[j.ID] = j
		if other, dup := byKey[j.IdempotencyKey]; dup {
			t.Errorf("key %s made two jobs: %s and %s", j.IdempotencyKey, other, j.ID)
		}
		byKey[j.IdempotencyKey] = j.ID
	}
	for key, id := range accepted {
		if _, ok := byID[id]; !ok {
			t.Errorf("job %s (key %s) was answered 202 but is gone after the leader was killed", id, key)
		}
	}
	// Placements resume under the new leader.
	var firstPlacement time.Time
	waitUntil := time.Now().Add(30 * time.Second)
	for firstPlacement.IsZero() && time.Now().Before(waitUntil) {
		l, err := sc.Jobs(ctx, url.Values{"state": {"placed"}, "limit": {"1000"}})
		if retryable(err) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range l.Jobs {
			if p := j.Placement; p != nil && p.PlacedAt.After(killedAt) && (firstPlacement.IsZero() || p.PlacedAt.Before(firstPlacement)) {
				firstPlacement = p.PlacedAt
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if firstPlacement.IsZero() {
		t.Fatal("the new leader placed nothing")
	}
	// Every job runs to the end on the agent, across the failover.
	waitUntil = time.Now().Add(2 * time.Minute)
	for {
		l, err := sc.Jobs(ctx, url.Values{"limit": {"1000"}, "state": {"succeeded"}})
		done := 0
		for err == nil {
			done += len(l.Jobs)
			if l.Next == "" {
				break
			}
			l, err = sc.Jobs(ctx, url.Values{"limit": {"1000"}, "state": {"succeeded"}, "after": {l.Next}})
		}
		if err != nil && !retryable(err) {
			t.Fatal(err)
		}
		if err == nil && done == len(jobs) {
			break
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("%d of %d jobs succeeded", done, len(jobs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("3 coordinator processes; %d jobs accepted (%d before the kill); leader %s killed; %s elected in %s; first placement by the new leader %s after the kill",
		len(accepted), before, leader.id, newLeader.id, electedIn.Round(time.Millisecond), firstPlacement.Sub(killedAt).Round(time.Millisecond))

	// The killed node comes back from its data dir and catches up.
	leader.start(t, strings.Join(peers, ","))
	waitUntil = time.Now().Add(30 * time.Second)
	for {
		var back proto.Job
		_, err := client.New(leader.url(), nil).Do(ctx, "GET", "/v1/jobs/"+jobs[len(jobs)-1].ID+"?stale", nil, &back)
		if err == nil {
			break
		}
		if time.Now().After(waitUntil) {
			t.Fatalf("the restarted node did not catch up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// retryable reports an answer that a busy cluster gives for a moment (a
// re-election on a loaded machine): the caller asks again until its deadline.
func retryable(err error) bool {
	var ae *client.Error
	return errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable
}
