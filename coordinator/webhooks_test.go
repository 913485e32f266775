package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator/webhook"
	"github.com/hearth-gpu/hearth/proto"
)

const testWebhookSecret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func webhookConfig(c *Config) {
	c.WebhookSecret = testWebhookSecret
	c.WebhookSchedule = webhook.Schedule{Base: 100 * time.Millisecond, Max: 400 * time.Millisecond, Window: time.Minute}
	c.WebhookTimeout = 300 * time.Millisecond
}

func newReceiver(t *testing.T) *webhook.Receiver {
	t.Helper()
	key, err := webhook.ParseSecret(testWebhookSecret)
	if err != nil {
		t.Fatal(err)
	}
	r, err := webhook.NewReceiver(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func submitWithWebhook(t *testing.T, api *client.Client, hook string) *proto.Job {
	t.Helper()
	spec := &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}, Webhook: hook}
	j, _, err := api.Submit(context.Background(), spec, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestWebhookRetriesFollowScheduleAndNothingWaits scripts a receiver that
// answers 500, hangs, then closes the connection before it accepts: the
// attempts come no sooner than the schedule says, the message arrives
// once accepted with a valid signature and the same webhook-id throughout,
// and placements carry on while the receiver misbehaves.
func TestWebhookRetriesFollowScheduleAndNothingWaits(t *testing.T) {
	s, api := newTestServer(t, webhookConfig)
	rcv := newReceiver(t)
	rcv.Script(webhook.FaultStatus500, webhook.FaultTimeout, webhook.FaultCloseConn, webhook.FaultTimeout, webhook.FaultTimeout)
	ctx := context.Background()

	// A job that fails on its host: failures are announced too. The host
	// has a slot for each of the jobs placed below, which stay placed.
	registerHost(t, api, "h1", []proto.GPU{{Index: 0, Slots: 10, SlotBytes: 1 << 30}}, nil)
	heartbeat(t, api, proto.Heartbeat{HostID: "h1"})
	j := submitWithWebhook(t, api, rcv.URL())
	j = waitForPlacement(t, api, j.ID)
	if err := api.Report(ctx, proto.JobReport{JobID: j.ID, HostID: "h1", Epoch: j.Placement.Epoch, State: proto.JobFailed, Error: "worker crashed"}); err != nil {
		t.Fatal(err)
	}

	// While the receiver fails and hangs, other work is placed.
	for range 10 {
		heartbeat(t, api, proto.Heartbeat{HostID: "h1"})
		waitForPlacement(t, api, submitWithWebhook(t, api, "").ID)
	}
	if n := len(rcv.Deliveries()); n != 0 {
		t.Logf("the webhook was delivered before the other jobs were placed (%d); the ordering check is moot this run", n)
	}

	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	got, err := rcv.Wait(wctx, 1)
	if err != nil {
		t.Fatalf("no delivery: %v (attempts %+v)", err, rcv.Attempts())
	}
	d := got[0]
	if !d.Verified {
		t.Fatal("delivery signature did not verify")
	}
	var p Payload
	if err := json.Unmarshal(d.Body, &p); err != nil || p.Type != "job.failed" || p.Data.ID != j.ID || p.Data.Error != "worker crashed" {
		t.Fatalf("payload %s: %v", d.Body, err)
	}
	attempts := rcv.Attempts()
	if len(attempts) != 6 {
		t.Fatalf("%d attempts, want 6 (5 scripted failures, then success)", len(attempts))
	}
	sched := webhookConfigSchedule()
	for i := 1; i < len(attempts); i++ {
		if attempts[i].ID != attempts[0].ID {
			t.Fatalf("attempt %d has webhook-id %s, want %s on every retry", i, attempts[i].ID, attempts[0].ID)
		}
		// A lower bound only: a busy machine can be later, never earlier.
		minGap := min(sched.Max, sched.Base<<(i-1))
		if gap := attempts[i].At.Sub(attempts[i-1].At); gap < minGap {
			t.Fatalf("attempt %d came %s after the previous one; the schedule says at least %s", i+1, gap, minGap)
		}
	}
	// The outcome is in the replicated state.
	waitFor(t, "the delivery to be recorded", func() bool {
		cur, _ := s.FSM().Job(j.ID)
		return len(cur.Webhooks) == 1 && cur.Webhooks[0].State == proto.DeliveryDelivered && cur.Webhooks[0].Attempts == 6
	})
}

func webhookConfigSchedule() webhook.Schedule {
	var c Config
	webhookConfig(&c)
	return c.WebhookSchedule
}

// TestWebhookPermanentRefusalGivesUp: a 410 is not retried.
func TestWebhookPermanentRefusalGivesUp(t *testing.T) {
	s, api := newTestServer(t, webhookConfig)
	rcv := newReceiver(t)
	rcv.Script(webhook.FaultStatus410)
	j := submitWithWebhook(t, api, rcv.URL())
	if _, err := api.Cancel(context.Background(), j.ID, "changed my mind"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the delivery to be abandoned", func() bool {
		cur, _ := s.FSM().Job(j.ID)
		return len(cur.Webhooks) == 1 && cur.Webhooks[0].State == proto.DeliveryFailed
	})
	if n := len(rcv.Attempts()); n != 1 {
		t.Fatalf("%d attempts after a 410, want 1", n)
	}
}

// TestWebhookDeliveredAcrossLeaderChange finishes jobs while the receiver
// refuses, stops the leader, and checks the new leader delivers them all,
// signed, each under the webhook-id the old leader used.
func TestWebhookDeliveredAcrossLeaderChange(t *testing.T) {
	tc := startTestCluster(t, 3, false, webhookConfig)
	rcv := newReceiver(t)
	rcv.Script(webhook.FaultStatus500, webhook.FaultStatus500, webhook.FaultStatus500)
	l := tc.leader(nil)
	var ids []string
	for i := range 3 {
		j := submitWithWebhook(t, tc.api[l], rcv.URL())
		if _, err := tc.api[l].Cancel(context.Background(), j.ID, fmt.Sprint("batch ", i)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	waitFor(t, "the old leader's first attempts", func() bool { return len(rcv.Attempts()) >= 3 })
	first := rcv.Attempts()
	tc.stop(l)
	var rest []int
	for i := range 3 {
		if i != l {
			rest = append(rest, i)
		}
	}
	tc.leader(rest)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := rcv.Wait(ctx, 3)
	if err != nil {
		t.Fatalf("deliveries after the leader change: %v", err)
	}
	seen := map[string]bool{}
	for _, d := range got {
		if !d.Verified {
			t.Fatalf("unverified delivery %s", d.ID)
		}
		var p Payload
		if err := json.Unmarshal(d.Body, &p); err != nil || p.Type != "job.cancelled" {
			t.Fatalf("payload %s", d.Body)
		}
		seen[p.Data.ID] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("job %s was never delivered", id)
		}
	}
	for _, a := range first {
		if !slices.ContainsFunc(got, func(d webhook.Delivery) bool { return d.ID == a.ID }) {
			t.Fatalf("webhook-id %s from the old leader was not the one delivered", a.ID)
		}
	}
}

func TestSubmitRefusesBadWebhookURLs(t *testing.T) {
	_, api := newTestServer(t, func(c *Config) { c.WebhookAllowHosts = []string{"hooks.example.com"} })
	for _, u := range []string{"ftp://hooks.example.com/x", "https://evil.example.net/x", "not a url"} {
		_, _, err := api.Submit(context.Background(), &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}, Webhook: u}, client.SubmitOptions{})
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != 400 || ce.Field != "webhook" {
			t.Errorf("webhook %q: %v", u, err)
		}
	}
}
