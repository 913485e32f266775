package coordinator

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/hearth-gpu/hearth/coordinator/webhook"
	"github.com/hearth-gpu/hearth/proto"
)

// dispatcher delivers webhooks from the leader. What must be delivered
// lives in the replicated state (a pending WebhookDelivery on the job, made
// by the entry that finished it), and so does every attempt's outcome, so a
// new leader carries on where the old one stopped: delivery is at least
// once, and a receiver deduplicates by webhook-id. Sends run on their own
// goroutines, bounded by WebhookConcurrency and each by WebhookTimeout, and
// outcomes are committed in batches, so a slow receiver delays nothing but
// its own retries.
type dispatcher struct {
	s      *Server
	sender *webhook.Sender
	sched  webhook.Schedule
	wake   chan struct{}

	// randomKey is set when no secret was configured; the first delivery
	// says so (once, and only if webhooks are used at all).
	randomKey bool
	warnOnce  sync.Once

	mu       sync.Mutex
	inflight map[string]bool // delivery ids being sent
	results  []proto.WebhookResult
}

func newDispatcher(s *Server) (*dispatcher, error) {
	secret := s.cfg.WebhookSecret
	random := secret == ""
	if random {
		var err error
		if secret, err = webhook.NewSecret(); err != nil {
			return nil, err
		}
	}
	key, err := webhook.ParseSecret(secret)
	if err != nil {
		return nil, err
	}
	return &dispatcher{
		s:         s,
		sender:    &webhook.Sender{Secret: key, Timeout: s.cfg.WebhookTimeout, UserAgent: "hearth-coordinator"},
		sched:     s.cfg.WebhookSchedule,
		randomKey: random,
		wake:      make(chan struct{}, 1),
		inflight:  make(map[string]bool),
	}, nil
}

// observe wakes the loop when an entry created a delivery.
func (d *dispatcher) observe(_ proto.Command, res any) {
	j, ok := res.(*proto.Job)
	if (ok && j.State.Terminal() && j.Spec.Webhook != "") || isBatch(res) {
		d.poke()
	}
}

func isBatch(res any) bool {
	switch res.(type) {
	case []SubmitResult, *HostDownResult, []string:
		return true
	}
	return false
}

func (d *dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Payload is the body of a webhook: the Standard Webhooks envelope around
// the job as it stands when the message is sent.
type Payload struct {
	Type      string     `json:"type"`
	Timestamp time.Time  `json:"timestamp"`
	Data      *proto.Job `json:"data"`
}

func (d *dispatcher) run(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		d.commit()
		d.start(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
		case <-t.C:
		}
	}
}

// start begins every due delivery that is not in flight, up to the limit.
func (d *dispatcher) start(ctx context.Context, wg *sync.WaitGroup) {
	now := d.s.cfg.Now()
	jobs := d.s.fsm.PendingWebhooks()
	slices.SortFunc(jobs, func(a, b *proto.Job) int { return cmp.Compare(a.Index, b.Index) })
	for _, j := range jobs {
		for _, del := range j.Webhooks {
			if del.State != proto.DeliveryPending || del.NextAt.After(now) {
				continue
			}
			d.mu.Lock()
			busy := d.inflight[del.ID] || len(d.inflight) >= d.s.cfg.WebhookConcurrency
			if !busy {
				d.inflight[del.ID] = true
			}
			d.mu.Unlock()
			if busy {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.send(ctx, j, del)
			}()
		}
	}
}

func (d *dispatcher) send(ctx context.Context, j *proto.Job, del proto.WebhookDelivery) {
	if d.randomKey {
		d.warnOnce.Do(func() {
			d.s.log.Warn("no webhook secret configured: webhooks are signed with a random key that receivers cannot know and that changes at restart; set one with --webhook-secret-file")
		})
	}
	now := d.s.cfg.Now().UTC()
	body, err := json.Marshal(Payload{Type: del.Event, Timestamp: now, Data: j})
	r := webhook.Result{Err: err}
	if err == nil {
		r = d.sender.Send(ctx, del.URL, del.ID, now, body)
	}
	out := proto.WebhookResult{JobID: j.ID, DeliveryID: del.ID, Attempt: del.Attempts, Status: r.Status, Time: now}
	outcome := "delivered"
	if r.Err == nil {
		out.Delivered = true
	} else {
		out.Error = r.Err.Error()
		// Counted from when the attempt ended, not began: a receiver that
		// hangs until the timeout still gets the full pause before the next.
		next, giveUp := d.sched.Next(del.Attempts+1, del.CreatedAt, d.s.cfg.Now().UTC(), nil)
		out.NextAt, out.GiveUp = next.UTC(), giveUp || !r.Retry
		outcome = "retry"
		if out.GiveUp {
			outcome = "failed"
		}
		d.s.log.Info("webhook attempt failed", "job", j.ID, "delivery", del.ID, "attempt", del.Attempts+1, "err", r.Err, "give_up", out.GiveUp)
	}
	d.s.metrics.webhooks.WithLabelValues(outcome).Inc()
	d.s.metrics.webhookSecs.Observe(r.Duration.Seconds())
	d.mu.Lock()
	d.results = append(d.results, out)
	d.mu.Unlock()
	d.poke()
}

// commit proposes the outcomes gathered so far in one entry. A delivery
// stays in flight until its outcome is applied, so it is not sent twice by
// this leader meanwhile.
func (d *dispatcher) commit() {
	d.mu.Lock()
	rs := d.results
	d.results = nil
	d.mu.Unlock()
	if len(rs) == 0 {
		return
	}
	_, err := d.s.propose(&proto.WebhookResults{Results: rs})
	if err != nil && !errors.Is(err, ErrNotLeader) {
		d.s.log.Warn("could not record webhook results; they will be retried", "err", err)
	}
	d.mu.Lock()
	for _, r := range rs {
		delete(d.inflight, r.DeliveryID)
	}
	d.mu.Unlock()
}
