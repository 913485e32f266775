package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/coordinator/scheduler"
	"github.com/hearth-gpu/hearth/coordinator/webhook"
	"github.com/hearth-gpu/hearth/coordinator/workflow"
	"github.com/hearth-gpu/hearth/proto"
)

// modelNeed is one model a spec asks for and where in the spec it was named,
// so an unknown name can be reported against the exact field.
type modelNeed struct {
	name, node, input, field string
}

// maxSubmitWait caps POST /v1/jobs?wait=.
const maxSubmitWait = 5 * time.Minute

// maxIdempotencyKey bounds the Idempotency-Key header.
const maxIdempotencyKey = 255

func (s *Server) handleSubmit(ctx *fasthttp.RequestCtx) (int, any, error) {
	start := time.Now()
	var wait time.Duration
	if v := ctx.QueryArgs().Peek("wait"); len(v) > 0 {
		d, err := time.ParseDuration(string(v))
		if err != nil || d < 0 || d > maxSubmitWait {
			return 0, nil, errBadRequest("invalid_query", "wait", "wait %q must be a duration from 0s to %s, like 60s", v, maxSubmitWait)
		}
		wait = d
	}
	key := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if len(key) > maxIdempotencyKey || strings.ContainsFunc(key, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return 0, nil, errBadRequest("invalid_header", "Idempotency-Key", "Idempotency-Key must be 1 to %d printable ASCII characters without spaces", maxIdempotencyKey)
	}
	body := ctx.PostBody()
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	now := s.cfg.Now().UTC()
	if key != "" {
		// A retried request usually finds its job already committed: answer
		// from the state without a Raft write. The FSM re-checks on apply,
		// so two racing first attempts still make one job.
		if j, err := s.fsm.Idempotent(key, hash, now); err != nil || j != nil {
			if err != nil {
				return 0, nil, err
			}
			ctx.Response.Header.Set("Idempotent-Replayed", "true")
			return s.answerSubmit(ctx, j, wait)
		}
	}
	var spec proto.JobSpec
	if err := decodeStrict(body, &spec); err != nil {
		return 0, nil, err
	}
	needs, err := validateSpec(&spec, s.cfg.WebhookAllowHosts)
	if err != nil {
		return 0, nil, err
	}
	refs, err := s.resolve(needs)
	if err != nil {
		return 0, nil, err
	}
	if err := s.checkPlaceable(&spec, refs); err != nil {
		return 0, nil, err
	}
	if spec.TimeoutS == 0 {
		spec.TimeoutS = s.cfg.DefaultTimeout.Seconds()
	}
	if spec.MaxAttempts == 0 {
		spec.MaxAttempts = DefaultMaxAttempts
	}
	job := proto.Job{ID: newJobID(now), Spec: spec, Models: refs, State: proto.JobQueued, SubmittedAt: now, IdempotencyKey: key}
	item, err := json.Marshal(proto.SubmitItem{Job: job, RequestHash: hash})
	if err != nil {
		return 0, nil, fmt.Errorf("coordinator: encode job: %w", err)
	}
	res, err := s.batch.submit(ctx, item)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return 0, nil, err
	}
	if res.Existing {
		ctx.Response.Header.Set("Idempotent-Replayed", "true")
	} else {
		s.metrics.submitted.Inc()
		s.metrics.acceptSecs.Observe(time.Since(start).Seconds())
	}
	return s.answerSubmit(ctx, res.Job, wait)
}

// answerSubmit answers 202 with the accepted job, or, when the client asked
// to wait, 200 with the job if it finishes within wait.
func (s *Server) answerSubmit(ctx *fasthttp.RequestCtx, j *proto.Job, wait time.Duration) (int, any, error) {
	ctx.Response.Header.Set("Location", "/v1/jobs/"+j.ID)
	if wait > 0 && !j.State.Terminal() {
		if done, ok := s.waitTerminal(ctx, j.ID, wait); ok {
			return http.StatusOK, done, nil
		}
		if cur, ok := s.fsm.Job(j.ID); ok {
			j = cur
		}
	}
	if j.State.Terminal() {
		return http.StatusOK, j, nil
	}
	return http.StatusAccepted, j, nil
}

// waitTerminal waits up to d for job id to finish.
func (s *Server) waitTerminal(ctx context.Context, id string, d time.Duration) (*proto.Job, bool) {
	sub := s.bus.Subscribe(id, s.bus.LastID(), 64)
	defer sub.Close()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		// Read after subscribing: a finish applied before the subscription
		// shows in the state, one applied after comes on the channel.
		if j, ok := s.fsm.Job(id); ok && j.State.Terminal() {
			return j, true
		}
		select {
		case _, ok := <-sub.C():
			if !ok {
				return nil, false
			}
		case <-timer.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		case <-s.ctx.Done():
			return nil, false
		}
	}
}

// validateSpec checks a submitted spec and lists the models it needs. It is
// pure, so everything it refuses is refused before anything reaches Raft.
func validateSpec(spec *proto.JobSpec, webhookHosts []string) ([]modelNeed, error) {
	kinds := 0
	for _, set := range []bool{len(spec.Workflow) > 0, spec.Worker != nil, spec.Exec != nil} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return nil, errBadRequest("invalid_spec", "workflow", "exactly one of workflow, worker or exec must be set (got %d)", kinds)
	}
	if spec.Priority < proto.MinPriority || spec.Priority > proto.MaxPriority {
		return nil, errBadRequest("invalid_field", "priority", "priority %d must be between %d and %d", spec.Priority, proto.MinPriority, proto.MaxPriority)
	}
	for k, v := range spec.Labels {
		if k == "" || len(k) > 128 || len(v) > 1024 {
			return nil, errBadRequest("invalid_field", "labels", "label keys must be 1-128 bytes and values at most 1024 bytes")
		}
	}
	if spec.TimeoutS < 0 || spec.TimeoutS > 7*24*3600 || math.IsNaN(spec.TimeoutS) {
		return nil, errBadRequest("invalid_field", "timeout_s", "timeout_s %v must be from 0 (the default) to one week", spec.TimeoutS)
	}
	if spec.QueueTTLS < 0 || spec.QueueTTLS > 30*24*3600 || math.IsNaN(spec.QueueTTLS) {
		return nil, errBadRequest("invalid_field", "queue_ttl_s", "queue_ttl_s %v must be from 0 (no limit) to 30 days", spec.QueueTTLS)
	}
	if spec.MaxAttempts < 0 || spec.MaxAttempts > 100 {
		return nil, errBadRequest("invalid_field", "max_attempts", "max_attempts %d must be from 0 (the default, %d) to 100", spec.MaxAttempts, DefaultMaxAttempts)
	}
	if spec.VRAMBytes < 0 {
		return nil, errBadRequest("invalid_field", "vram_bytes", "vram_bytes %d must not be negative", spec.VRAMBytes)
	}
	if spec.Webhook != "" {
		if err := webhook.ValidateURL(spec.Webhook, webhookHosts); err != nil {
			return nil, errBadRequest("invalid_field", "webhook", "%v", err)
		}
	}
	var needs []modelNeed
	switch spec.Kind() {
	case "workflow":
		w, err := workflow.Parse(spec.Workflow)
		if err != nil {
			return nil, err
		}
		uses, err := w.Models()
		if err != nil {
			return nil, err
		}
		for _, u := range uses {
			needs = append(needs, modelNeed{name: u.Name(), node: u.Node, input: u.Input,
				field: fmt.Sprintf("workflow.%s.inputs.%s", u.Node, u.Input)})
		}
	case "worker":
		needs = namedNeeds("worker.models", spec.Worker.Models)
	case "exec":
		if len(spec.Exec.Command) == 0 || spec.Exec.Command[0] == "" {
			return nil, errBadRequest("invalid_field", "exec.command", "exec.command must name a program")
		}
		needs = namedNeeds("exec.models", spec.Exec.Models)
	}
	for _, n := range needs {
		if err := proto.ValidateModelName(n.name); err != nil {
			return nil, errBadRequest("invalid_model_name", n.field, "model name %v", err)
		}
	}
	return needs, nil
}

func namedNeeds(field string, names []string) []modelNeed {
	out := make([]modelNeed, 0, len(names))
	seen := make(map[string]bool)
	for i, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		out = append(out, modelNeed{name: n, field: fmt.Sprintf("%s[%d]", field, i)})
	}
	return out
}

// checkPlaceable refuses, with 422, a job that no registered host could
// ever run: one that needs more VRAM than the largest slot of any host that
// takes its kind, or whose kind no host runs. Down and draining hosts count,
// since they come back; with no host registered yet every job is taken,
// since the fleet may still be starting.
func (s *Server) checkPlaceable(spec *proto.JobSpec, refs []proto.ModelRef) error {
	hosts := s.fsm.HostCount()
	if hosts == 0 {
		return nil
	}
	kind := spec.Kind()
	largest, takers := s.fsm.SlotReach(kind)
	if takers == 0 {
		return &apiError{Status: http.StatusUnprocessableEntity, Code: "no_runner", Field: kind,
			Message: fmt.Sprintf("no registered host runs %s jobs (%d hosts, none with a runner for them)", kind, hosts)}
	}
	need := scheduler.VRAMNeed(&proto.Job{Spec: *spec, Models: refs})
	if need > 0 && uint64(need) > largest {
		field, what := "vram_bytes", fmt.Sprintf("vram_bytes asks for %s", humanBytes(need))
		if spec.VRAMBytes < need {
			field, what = modelsField(kind), fmt.Sprintf("its models need %s", humanBytes(need))
		}
		return &apiError{Status: http.StatusUnprocessableEntity, Code: "insufficient_vram", Field: field,
			Message: fmt.Sprintf("the job cannot fit any slot: %s, and the largest slot of the %d hosts that run %s jobs holds %s", what, takers, kind, humanBytes(int64(largest)))}
	}
	return nil
}

// modelsField names where a spec of kind lists its models.
func modelsField(kind string) string {
	switch kind {
	case "worker":
		return "worker.models"
	case "exec":
		return "exec.models"
	}
	return "workflow"
}

// humanBytes spells n in GiB, MiB or bytes, for messages.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// resolve maps each needed name to its catalog entry. The digest is frozen
// into the job here: a later catalog change does not alter an accepted job.
func (s *Server) resolve(needs []modelNeed) ([]proto.ModelRef, error) {
	refs := make([]proto.ModelRef, 0, len(needs))
	for _, n := range needs {
		m, ok := s.fsm.Model(n.name)
		if !ok {
			msg := fmt.Sprintf("model %q is not in the catalog", n.name)
			if n.node != "" {
				msg = fmt.Sprintf("node %s input %s names model %q, which is not in the catalog; register it with PUT /v1/models/%s",
					n.node, n.input, n.name, n.name)
			}
			return nil, &apiError{Status: http.StatusUnprocessableEntity, Code: "model_not_found", Field: n.field, Message: msg}
		}
		refs = append(refs, proto.ModelRef{Name: m.Name, Digest: m.Digest, Size: m.Size, Origin: m.Origin,
			ChunkSize: m.ChunkSize, Chunks: m.Chunks, Node: n.node, Input: n.input})
	}
	return refs, nil
}
