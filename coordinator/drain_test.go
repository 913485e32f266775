package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

func hostStatus(t *testing.T, api *client.Client, id string) *proto.HostView {
	t.Helper()
	h, err := api.Host(context.Background(), id)
	if err != nil {
		t.Fatalf("get host %s: %v", id, err)
	}
	return h
}

// A drained host takes no new job even where the job's model is resident,
// while the job it runs finishes; it lists as draining, then drained; the
// drain outlasts a re-registration and a snapshot; clearing it brings
// placements back.
func TestDrainHost(t *testing.T) {
	s, api := newTestServer(t, nil)
	ctx := context.Background()
	putTestModel(t, api, modelA, modelASize)
	digest := testDigest(modelA)
	// h1 holds the model in both its slots' workers: every job would go
	// there if it could.
	registerHost(t, api, "h1", twoSlotGPU, nil)
	registerHost(t, api, "h2", []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}, nil)
	h1Beat := proto.Heartbeat{HostID: "h1", Slots: []proto.SlotState{{GPU: 0, Slot: 0, Resident: []proto.Digest{digest}}, {GPU: 0, Slot: 1, Resident: []proto.Digest{digest}}}}
	heartbeat(t, api, h1Beat)
	heartbeat(t, api, proto.Heartbeat{HostID: "h2"})

	j1 := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	if j1.Placement.Host != "h1" {
		t.Fatalf("first job placed on %s, want h1 (model resident)", j1.Placement.Host)
	}
	report := func(j *proto.Job, st proto.JobState) {
		t.Helper()
		if err := api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: j.Placement.Host, Epoch: j.Placement.Epoch, State: st}); err != nil {
			t.Fatalf("report %s %s: %v", j.ID, st, err)
		}
	}
	report(j1, proto.JobRunning)

	v, err := api.DrainHost(ctx, "h1", true)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Drain || v.DrainSince == nil || v.Status != proto.HostDraining || v.ActiveJobs != 1 {
		t.Fatalf("after drain: drain=%v since=%v status=%s active=%d; want draining with 1 job", v.Drain, v.DrainSince, v.Status, v.ActiveJobs)
	}

	// h1's free slot holds the model, yet the job goes to h2.
	j2 := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	if j2.Placement.Host != "h2" {
		t.Fatalf("job submitted during the drain placed on %s, want h2", j2.Placement.Host)
	}

	// The agent restarts: its new registration does not clear the drain.
	registerHost(t, api, "h1", twoSlotGPU, nil)
	heartbeat(t, api, h1Beat)
	if h, _ := s.FSM().Host("h1"); !h.Drain {
		t.Fatal("re-registration cleared the drain")
	}

	// The running job finishes; nothing is left, so h1 is drained.
	report(j1, proto.JobSucceeded)
	if got := hostStatus(t, api, "h1"); got.Status != proto.HostDrained || got.ActiveJobs != 0 {
		t.Fatalf("after its last job: status %s, active %d; want drained, 0", got.Status, got.ActiveJobs)
	}
	if hosts, err := api.Hosts(ctx); err != nil || hosts[0].ID != "h1" || hosts[0].Status != proto.HostDrained {
		t.Fatalf("host listing: %+v, %v", hosts, err)
	}
	if j, _ := api.Job(ctx, j1.ID); j.State != proto.JobSucceeded {
		t.Fatalf("the job running at drain ended %s", j.State)
	}

	// A snapshot carries the drain.
	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, s.FSM())))); err != nil {
		t.Fatal(err)
	}
	if h, ok := restored.Host("h1"); !ok || !h.Drain || h.DrainSince == nil {
		t.Fatalf("h1 after snapshot and restore: %+v", h)
	}

	// Clearing the drain makes h1 eligible again: the next job goes to its
	// resident model rather than queue behind j2 on h2.
	if v, err = api.DrainHost(ctx, "h1", false); err != nil || v.Drain || v.DrainSince != nil || v.Status != proto.HostReady {
		t.Fatalf("after undrain: %+v, %v", v, err)
	}
	j3 := waitForPlacement(t, api, submitWorkflow(t, api, "a.safetensors", 0).ID)
	if j3.Placement.Host != "h1" {
		t.Fatalf("job after undrain placed on %s, want h1", j3.Placement.Host)
	}
}

func TestDrainRequests(t *testing.T) {
	s, api := newTestServer(t, nil)
	registerHost(t, api, "h1", twoSlotGPU, nil)
	post := func(path, body string) (int, proto.ErrorBody) {
		t.Helper()
		resp, err := http.Post(s.URL()+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e proto.APIError
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 400 && (json.Unmarshal(b, &e) != nil || e.Error.Message == "") {
			t.Fatalf("POST %s: %d with body %s, want the JSON error shape", path, resp.StatusCode, b)
		}
		return resp.StatusCode, e.Error
	}
	// No body means drain.
	if code, _ := post("/v1/hosts/h1/drain", ""); code != http.StatusOK {
		t.Fatalf("drain without a body: %d", code)
	}
	if h, _ := s.FSM().Host("h1"); !h.Drain {
		t.Fatal("a drain without a body did not drain")
	}
	if code, e := post("/v1/hosts/nope/drain", `{"drain": true}`); code != http.StatusNotFound || e.Code != "host_not_found" || e.Field != "id" {
		t.Fatalf("drain of an unknown host: %d %+v", code, e)
	}
	if code, e := post("/v1/hosts/h1/drain", `{"drain": true, "deadline": "1h"}`); code != http.StatusBadRequest || e.Code != "unknown_field" || e.Field != "deadline" {
		t.Fatalf("drain with an unknown field: %d %+v", code, e)
	}
	if _, err := api.Host(context.Background(), "nope"); !client.IsCode(err, "host_not_found") {
		t.Fatalf("get unknown host: %v", err)
	}
	var ce *client.Error
	if _, err := api.DrainHost(context.Background(), "nope", false); !errors.As(err, &ce) || ce.Status != http.StatusNotFound {
		t.Fatalf("undrain unknown host: %v", err)
	}
}
