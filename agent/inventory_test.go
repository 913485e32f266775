package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

// beatRecorder is a reverse proxy between an agent and a coordinator that
// records every heartbeat it passes on, and can be pointed at another
// coordinator mid-test.
type beatRecorder struct {
	srv *httptest.Server
	mu  sync.Mutex
	to  *url.URL
	gen int // bumped by switchTo
	log []recordedBeat
}

type recordedBeat struct {
	gen  int
	beat proto.Heartbeat
}

func newBeatRecorder(t *testing.T, target string) *beatRecorder {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	r := &beatRecorder{gen: 1, to: u}
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		r.mu.Lock()
		defer r.mu.Unlock()
		pr.SetURL(r.to)
	}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/v1/agent/heartbeat" {
			body, _ := io.ReadAll(req.Body)
			req.Body = io.NopCloser(bytes.NewReader(body))
			var b proto.Heartbeat
			if err := json.Unmarshal(body, &b); err != nil {
				t.Errorf("agent sent a heartbeat that is not JSON: %v", err)
			}
			r.mu.Lock()
			r.log = append(r.log, recordedBeat{gen: r.gen, beat: b})
			r.mu.Unlock()
		}
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *beatRecorder) switchTo(t *testing.T, target string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	r.to = u
	r.gen++
	r.mu.Unlock()
}

// waitFor polls the beats of generation gen until ok holds, for up to 20 s.
func (r *beatRecorder) waitFor(t *testing.T, what string, gen int, ok func([]proto.Heartbeat) bool) []proto.Heartbeat {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var beats []proto.Heartbeat
		r.mu.Lock()
		for _, rb := range r.log {
			if rb.gen == gen {
				beats = append(beats, rb.beat)
			}
		}
		r.mu.Unlock()
		if ok(beats) {
			return beats
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 20 s; heartbeats seen: %+v", what, beats)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fullWith(d proto.Digest) func([]proto.Heartbeat) bool {
	return func(beats []proto.Heartbeat) bool {
		for _, b := range beats {
			if inv := b.Inventory; inv != nil && inv.Base == 0 && slices.ContainsFunc(inv.Added, func(cb proto.CachedBlob) bool { return cb.Digest == d }) {
				return true
			}
		}
		return false
	}
}

func waitHostCaches(t *testing.T, api *client.Client, d proto.Digest) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		hosts, err := api.Hosts(context.Background())
		if err == nil && len(hosts) == 1 && slices.ContainsFunc(hosts[0].Cache, func(cb proto.CachedBlob) bool { return cb.Digest == d }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the coordinator never listed %s in the host's cache: %+v, %v", d.Short(), hosts, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An agent sends its whole inventory once, then only changes (nothing while
// nothing changes); a coordinator that holds none of it (a new leader) is
// sent the whole inventory again at once, and so is one the agent has to
// register with anew.
func TestAgentSendsInventoryChanges(t *testing.T) {
	c1 := startCoordinator(t, freeAddr(t), t.TempDir())
	t.Cleanup(func() { c1.Close() })
	rec := newBeatRecorder(t, c1.URL())
	origin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := agent.New(ctx, agentConfig(t, rec.srv.URL, origin))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	api1 := client.New(c1.URL(), nil)
	if err := devcluster.SeedModels(ctx, api1, origin, nil); err != nil {
		t.Fatal(err)
	}

	j, err := api1.SubmitRaw(ctx, []byte(`{"worker":{"models":["vae/sdxl_vae.safetensors"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if j, err = api1.WaitJob(ctx, j.ID, 20*time.Millisecond); err != nil || j.State != proto.JobSucceeded {
		t.Fatalf("job = %+v, %v", j, err)
	}
	digest := j.Placement.Models[0].Digest
	beats := rec.waitFor(t, "delta adding the fetched model", 1, func(bs []proto.Heartbeat) bool {
		return slices.ContainsFunc(bs, func(b proto.Heartbeat) bool {
			return b.Inventory != nil && b.Inventory.Base != 0 && slices.ContainsFunc(b.Inventory.Added, func(cb proto.CachedBlob) bool { return cb.Digest == digest })
		})
	})
	var prev *proto.InventoryDelta
	for i, b := range beats {
		if b.Cache != nil {
			t.Fatalf("beat %d carries a whole Cache list", i)
		}
		switch inv := b.Inventory; {
		case prev == nil && inv == nil:
			t.Fatalf("beat %d, the first, carries no inventory", i)
		case prev == nil && inv.Base != 0:
			t.Fatalf("the first beat carries a delta on %d, not the whole inventory", inv.Base)
		case prev != nil && inv != nil && inv.Base != prev.Version:
			t.Fatalf("beat %d: %+v; want a delta on the version before, %d", i, inv, prev.Version)
		}
		if b.Inventory != nil {
			prev = b.Inventory
		}
	}
	waitHostCaches(t, api1, digest)

	// A coordinator that has the registration but no inventory, as a new
	// leader would: its first answer says 0, and the whole inventory
	// follows at once.
	c2 := startCoordinator(t, freeAddr(t), t.TempDir())
	t.Cleanup(func() { c2.Close() })
	api2 := client.New(c2.URL(), nil)
	h, _ := c1.FSM().Host("h-test")
	if err := api2.Register(ctx, *h); err != nil {
		t.Fatal(err)
	}
	rec.switchTo(t, c2.URL())
	rec.waitFor(t, "whole inventory for the second coordinator", 2, fullWith(digest))
	waitHostCaches(t, api2, digest)

	// A coordinator that does not know the host: the agent registers again
	// and sends the whole inventory.
	c3 := startCoordinator(t, freeAddr(t), t.TempDir())
	t.Cleanup(func() { c3.Close() })
	rec.switchTo(t, c3.URL())
	rec.waitFor(t, "whole inventory for the third coordinator", 3, fullWith(digest))
	waitHostCaches(t, client.New(c3.URL(), nil), digest)
}
