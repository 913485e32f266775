package coordinator

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

func submitItem(id, key, hash string, at time.Time) proto.SubmitItem {
	return proto.SubmitItem{Job: proto.Job{ID: id, Spec: proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}, Webhook: "http://127.0.0.1:1/hook"},
		SubmittedAt: at, IdempotencyKey: key}, RequestHash: hash}
}

func TestFSMSubmitBatchIdempotency(t *testing.T) {
	h := seededFSM(t)
	res := h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{
		submitItem("b1", "key-1", "hash-a", t0),
		submitItem("b2", "key-1", "hash-a", t0), // same key and body in the same batch: the same job
		submitItem("b3", "key-1", "hash-b", t0), // same key, other body: refused
		submitItem("b4", "", "", t0),
		submitItem("b4", "", "", t0), // duplicate id: refused
	}}).([]SubmitResult)
	if res[0].Err != nil || res[0].Existing || res[0].Job.ID != "b1" {
		t.Fatalf("first: %+v", res[0])
	}
	if res[1].Err != nil || !res[1].Existing || res[1].Job.ID != "b1" {
		t.Fatalf("repeat: %+v", res[1])
	}
	if !errors.Is(res[2].Err, ErrIdempotencyConflict) {
		t.Fatalf("conflict: %+v", res[2])
	}
	if res[3].Err != nil || !errors.Is(res[4].Err, ErrJobExists) {
		t.Fatalf("duplicate id: %+v %+v", res[3], res[4])
	}
	if _, ok := h.fsm.Job("b2"); ok {
		t.Fatal("the idempotent repeat made a job")
	}
	// The key is judged at the time in the entry, not a replica's clock:
	// past the window it makes a new job.
	later := h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("b5", "key-1", "hash-b", t0.Add(IdempotencyWindow))}}).([]SubmitResult)
	if later[0].Err != nil || later[0].Existing {
		t.Fatalf("after the window: %+v", later[0])
	}
	if j, err := h.fsm.Idempotent("key-1", "hash-b", t0.Add(IdempotencyWindow+time.Minute)); err != nil || j.ID != "b5" {
		t.Fatalf("lookup after reuse: %v %v", j, err)
	}
}

func TestFSMHostDownRequeuesThenFails(t *testing.T) {
	h := seededFSM(t)
	h.apply(&proto.RegisterHost{Host: proto.Host{ID: "h2", GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}}})
	down := func(host string, at time.Time) *HostDownResult {
		return h.apply(&proto.MarkHostDown{HostID: host, Reason: "no heartbeat", Time: at, Backoff: time.Second, BackoffMax: 4 * time.Second}).(*HostDownResult)
	}
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("hd", "", "", t0)}})
	at := t0
	for attempt := 1; attempt <= DefaultMaxAttempts; attempt++ {
		host := []string{"h1", "h2"}[attempt%2]
		h.apply(&proto.RegisterHost{Host: proto.Host{ID: host, GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}}})
		placed := h.mustJob(&proto.PlaceJob{JobID: "hd", Placement: proto.Placement{Host: host, PlacedAt: at}})
		if placed.Attempts != attempt {
			t.Fatalf("attempt %d: job says %d", attempt, placed.Attempts)
		}
		epoch := placed.Placement.Epoch
		at = at.Add(time.Minute)
		r := down(host, at)
		j, _ := h.fsm.Job("hd")
		if attempt < DefaultMaxAttempts {
			if len(r.Requeued) != 1 || r.Requeued[0] != "hd" || j.State != proto.JobQueued || j.Placement != nil || j.NotBefore == nil {
				t.Fatalf("attempt %d: not requeued: %+v %+v", attempt, r, j)
			}
			if want := at.Add(time.Second << (attempt - 1)); !j.NotBefore.Equal(want) {
				t.Fatalf("attempt %d: not_before %v, want %v", attempt, j.NotBefore, want)
			}
			// The lost attempt's agent can no longer report.
			if err, _ := h.apply(&proto.ReportJob{Report: proto.JobReport{JobID: "hd", HostID: host, Epoch: epoch, State: proto.JobRunning}}).(error); !errors.Is(err, ErrStaleEpoch) {
				t.Fatalf("report from the lost attempt: %v", err)
			}
			// A down host takes no placements until it registers again.
			if err, _ := h.apply(&proto.PlaceJob{JobID: "hd", Placement: proto.Placement{Host: host}}).(error); !errors.Is(err, ErrHostDown) {
				t.Fatalf("place on a down host: %v", err)
			}
		} else {
			if len(r.Failed) != 1 || j.State != proto.JobFailed || j.FinishedAt == nil {
				t.Fatalf("last attempt: want failed, got %+v %+v", r, j)
			}
			if len(j.Webhooks) != 1 || j.Webhooks[0].Event != "job.failed" || j.Webhooks[0].State != proto.DeliveryPending {
				t.Fatalf("failed job's webhook: %+v", j.Webhooks)
			}
		}
	}
	if slices.ContainsFunc(h.fsm.ActiveJobs(), func(j *proto.Job) bool { return j.ID == "hd" }) {
		t.Fatal("a failed job is still in the live set")
	}
}

func TestFSMCancelRetryTimeout(t *testing.T) {
	h := seededFSM(t)
	placed := h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}})
	c := h.mustJob(&proto.CancelJob{JobID: "j1", Reason: "user", Time: t0})
	if c.State != proto.JobCancelled || len(h.fsm.Assignments("h1")) != 0 {
		t.Fatalf("cancel: %+v, assignments %v", c, h.fsm.Assignments("h1"))
	}
	if err, _ := h.apply(&proto.CancelJob{JobID: "j1", Time: t0}).(error); !errors.Is(err, ErrBadTransition) {
		t.Fatalf("cancel twice: %v", err)
	}
	if err, _ := h.apply(&proto.ReportJob{Report: proto.JobReport{JobID: "j1", HostID: "h1", Epoch: placed.Placement.Epoch, State: proto.JobSucceeded}}).(error); !errors.Is(err, ErrBadTransition) {
		t.Fatalf("report after cancel: %v", err)
	}
	r := h.mustJob(&proto.RetryJob{JobID: "j1", Time: t0.Add(time.Second)})
	if r.State != proto.JobQueued || r.Attempts != 0 || r.Retries != 1 || r.FinishedAt != nil || r.Error != "" {
		t.Fatalf("retry: %+v", r)
	}
	// Queue TTL: only a job still queued is timed out by an epoch-0 item.
	h.apply(&proto.TimeoutJobs{Items: []proto.TimeoutItem{{JobID: "j1", Reason: "ttl"}}, Time: t0.Add(time.Hour)})
	j, _ := h.fsm.Job("j1")
	if j.State != proto.JobTimedOut || j.Error != "ttl" {
		t.Fatalf("ttl: %+v", j)
	}
	h.mustJob(&proto.RetryJob{JobID: "j1", Time: t0})
	p2 := h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}})
	// A run timeout for an older epoch leaves the newer attempt alone.
	h.apply(&proto.TimeoutJobs{Items: []proto.TimeoutItem{{JobID: "j1", Epoch: placed.Placement.Epoch, Reason: "old"}}, Time: t0})
	if j, _ := h.fsm.Job("j1"); j.State != proto.JobPlaced {
		t.Fatalf("stale timeout applied: %s", j.State)
	}
	h.apply(&proto.TimeoutJobs{Items: []proto.TimeoutItem{{JobID: "j1", Epoch: p2.Placement.Epoch, Reason: "ran too long"}}, Time: t0})
	if j, _ := h.fsm.Job("j1"); j.State != proto.JobTimedOut {
		t.Fatalf("timeout: %s", j.State)
	}
	if err, _ := h.apply(&proto.RetryJob{JobID: "nope"}).(error); !errors.Is(err, ErrJobNotFound) {
		t.Fatalf("retry unknown: %v", err)
	}
}

func TestFSMEventsAndHistory(t *testing.T) {
	h := &fsmHarness{t: t, fsm: NewFSM()}
	var got []proto.JobEvent
	h.fsm.onEvents = func(evs []proto.JobEvent) { got = append(got, evs...) }
	h.apply(&proto.RegisterHost{Host: proto.Host{ID: "h1"}})
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("e1", "", "", t0), submitItem("e2", "", "", t0)}})
	p := h.mustJob(&proto.PlaceJob{JobID: "e1", Placement: proto.Placement{Host: "h1"}})
	h.apply(&proto.ReportJob{Report: proto.JobReport{JobID: "e1", HostID: "h1", Epoch: p.Placement.Epoch, State: proto.JobRunning, Progress: &proto.Progress{Value: 1, Max: 4}}})
	h.apply(&proto.ReportJob{Report: proto.JobReport{JobID: "e1", HostID: "h1", Epoch: p.Placement.Epoch, State: proto.JobSucceeded}})
	var types []string
	for i, ev := range got {
		if i > 0 && ev.ID <= got[i-1].ID {
			t.Fatalf("event ids not increasing: %d after %d", ev.ID, got[i-1].ID)
		}
		if ev.JobID == "e1" {
			types = append(types, ev.Type+":"+string(ev.State))
		}
	}
	want := []string{"state:queued", "placement:", "state:placed", "progress:", "state:running", "state:succeeded"}
	if len(types) != len(want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("events %v, want %v", types, want)
		}
	}
	j, _ := h.fsm.Job("e1")
	if len(j.History) != len(want)-1 { // progress is streamed, not kept
		t.Fatalf("history holds %d events, want %d", len(j.History), len(want)-1)
	}
	if proto.EventIndex(got[1].ID) != proto.EventIndex(got[0].ID) || got[1].ID != got[0].ID+1 {
		t.Fatalf("two jobs of one batch: ids %d and %d", got[0].ID, got[1].ID)
	}
}

func TestFSMWebhookResults(t *testing.T) {
	h := seededFSM(t)
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("w1", "", "", t0)}})
	j := h.mustJob(&proto.CancelJob{JobID: "w1", Time: t0})
	d := j.Webhooks[0]
	if len(h.fsm.PendingWebhooks()) != 1 {
		t.Fatal("cancelled job with a webhook is not pending delivery")
	}
	h.apply(&proto.WebhookResults{Results: []proto.WebhookResult{{JobID: "w1", DeliveryID: d.ID, Attempt: 0, Status: 500, Error: "500", NextAt: t0.Add(time.Second)}}})
	// A result for an attempt already counted (another leader's) is ignored.
	h.apply(&proto.WebhookResults{Results: []proto.WebhookResult{{JobID: "w1", DeliveryID: d.ID, Attempt: 0, Delivered: true}}})
	j, _ = h.fsm.Job("w1")
	if j.Webhooks[0].Attempts != 1 || j.Webhooks[0].State != proto.DeliveryPending || !j.Webhooks[0].NextAt.Equal(t0.Add(time.Second)) {
		t.Fatalf("after a failed attempt: %+v", j.Webhooks[0])
	}
	h.apply(&proto.WebhookResults{Results: []proto.WebhookResult{{JobID: "w1", DeliveryID: d.ID, Attempt: 1, Delivered: true, Status: 200, Time: t0}}})
	j, _ = h.fsm.Job("w1")
	if j.Webhooks[0].State != proto.DeliveryDelivered || j.Webhooks[0].DoneAt == nil || len(h.fsm.PendingWebhooks()) != 0 {
		t.Fatalf("after delivery: %+v", j.Webhooks[0])
	}
}

// A snapshot carries what the log built beyond jobs: idempotency keys,
// coordinator addresses, and (rebuilt on restore) the live-job and
// pending-webhook indexes.
func TestFSMSnapshotKeepsKeysAddressesAndIndexes(t *testing.T) {
	h := seededFSM(t)
	h.apply(&proto.SetCoordinator{Coordinator: proto.Coordinator{ID: "c1", HTTPAddr: "127.0.0.1:7700", RaftAddr: "127.0.0.1:7701"}})
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("k1", "key-a", "hash-a", t0), submitItem("k2", "", "", t0)}})
	h.mustJob(&proto.CancelJob{JobID: "k2", Time: t0})
	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.fsm)))); err != nil {
		t.Fatal(err)
	}
	if j, err := restored.Idempotent("key-a", "hash-a", t0); err != nil || j == nil || j.ID != "k1" {
		t.Fatalf("idempotency key after restore: %v %v", j, err)
	}
	if _, err := restored.Idempotent("key-a", "hash-b", t0); !errors.Is(err, ErrIdempotencyConflict) {
		t.Fatalf("conflict after restore: %v", err)
	}
	if co, ok := restored.Coordinator("c1"); !ok || co.HTTPAddr != "127.0.0.1:7700" {
		t.Fatalf("coordinator after restore: %+v", co)
	}
	live := func(f *FSM) []string {
		var ids []string
		for _, j := range f.ActiveJobs() {
			ids = append(ids, j.ID)
		}
		slices.Sort(ids)
		return ids
	}
	if !slices.Equal(live(restored), live(h.fsm)) {
		t.Fatalf("live jobs after restore %v, want %v", live(restored), live(h.fsm))
	}
	if p := restored.PendingWebhooks(); len(p) != 1 || p[0].ID != "k2" {
		t.Fatalf("pending webhooks after restore: %v", p)
	}
}

// A retryable failure (the worker died under the job) requeues the job
// with backoff and no webhook until its attempts run out; a plain failure
// ends it at once.
func TestFSMRetryableReportRequeuesThenFails(t *testing.T) {
	h := seededFSM(t)
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("rj", "", "", t0)}})
	at := t0
	for attempt := 1; attempt <= DefaultMaxAttempts; attempt++ {
		placed := h.mustJob(&proto.PlaceJob{JobID: "rj", Placement: proto.Placement{Host: "h1", PlacedAt: at}})
		at = at.Add(time.Minute)
		j := h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "rj", HostID: "h1", Epoch: placed.Placement.Epoch,
			State: proto.JobFailed, Error: "run: worker exited", Retryable: true, Time: at}, Backoff: time.Second, BackoffMax: time.Minute})
		if attempt < DefaultMaxAttempts {
			if j.State != proto.JobQueued || j.Placement != nil || j.NotBefore == nil || !j.NotBefore.Equal(at.Add(time.Second<<(attempt-1))) || len(j.Webhooks) != 0 {
				t.Fatalf("attempt %d: %s not_before %v webhooks %d; want queued after %v without a webhook", attempt, j.State, j.NotBefore, len(j.Webhooks), time.Second<<(attempt-1))
			}
			continue
		}
		if j.State != proto.JobFailed || !strings.Contains(j.Error, "gave up after 3 attempts") || len(j.Webhooks) != 1 {
			t.Fatalf("last attempt: %s %q webhooks %d; want failed, giving up", j.State, j.Error, len(j.Webhooks))
		}
	}
	h.apply(&proto.SubmitJobs{Items: []proto.SubmitItem{submitItem("plain", "", "", t0)}})
	placed := h.mustJob(&proto.PlaceJob{JobID: "plain", Placement: proto.Placement{Host: "h1", PlacedAt: at}})
	j := h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "plain", HostID: "h1", Epoch: placed.Placement.Epoch,
		State: proto.JobFailed, Error: "run: job failed: bad input", Time: at}, Backoff: time.Second, BackoffMax: time.Minute})
	if j.State != proto.JobFailed || j.Attempts != 1 {
		t.Fatalf("non-retryable failure: %s after %d attempts, want failed after 1", j.State, j.Attempts)
	}
}
