package coordinator

import (
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/coordinator/workflow"
	"github.com/hearth-gpu/hearth/proto"
)

// modelNeed is one model a spec asks for and where in the spec it was named,
// so an unknown name can be reported against the exact field.
type modelNeed struct {
	name, node, input, field string
}

func (s *Server) handleSubmit(ctx *fasthttp.RequestCtx) (int, any, error) {
	start := time.Now()
	var spec proto.JobSpec
	if err := decodeStrict(ctx.PostBody(), &spec); err != nil {
		return 0, nil, err
	}
	needs, err := validateSpec(&spec)
	if err != nil {
		return 0, nil, err
	}
	refs, err := s.resolve(needs)
	if err != nil {
		return 0, nil, err
	}
	now := s.cfg.Now().UTC()
	job := proto.Job{ID: newJobID(now), Spec: spec, Models: refs, State: proto.JobQueued, SubmittedAt: now}
	res, err := s.propose(&proto.SubmitJob{Job: job})
	if err != nil {
		return 0, nil, err
	}
	s.metrics.submitted.Inc()
	s.metrics.acceptSecs.Observe(time.Since(start).Seconds())
	ctx.Response.Header.Set("Location", "/v1/jobs/"+job.ID)
	return http.StatusAccepted, res, nil
}

// validateSpec checks a submitted spec and lists the models it needs. It is
// pure, so everything it refuses is refused before anything reaches Raft.
func validateSpec(spec *proto.JobSpec) ([]modelNeed, error) {
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
		refs = append(refs, proto.ModelRef{Name: m.Name, Digest: m.Digest, Size: m.Size, Origin: m.Origin, Node: n.node, Input: n.input})
	}
	return refs, nil
}
