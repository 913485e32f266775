package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/valyala/fasthttp"

	"github.com/hearth-gpu/hearth/coordinator/workflow"
	"github.com/hearth-gpu/hearth/proto"
)

// apiError is an error with an HTTP status and a machine-readable code.
// Handlers return it (or a sentinel mapped below); one wrapper writes the
// JSON shape {"error": {"code", "message", "field"}}.
type apiError struct {
	Status  int
	Code    string
	Message string
	Field   string
	Leader  string // the leader's HTTP address, on answers that ask to retry there
}

func (e *apiError) Error() string { return e.Message }

// leadershipCodes are the answers of a node that cannot serve a write now.
var leadershipCodes = map[string]bool{"not_leader": true, "no_leader": true, "leader_unreachable": true}

func errBadRequest(code, field, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// toAPIError maps any handler error to its status and code.
func toAPIError(err error) *apiError {
	var ae *apiError
	var fe *proto.FieldError
	var we *workflow.Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &we):
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_workflow", Field: we.Field, Message: we.Message}
	case errors.As(err, &fe):
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_field", Field: fe.Field, Message: fe.Message}
	case errors.Is(err, ErrNotLeader):
		return &apiError{Status: http.StatusServiceUnavailable, Code: "not_leader", Message: err.Error() + "; retry shortly (GET /v1/cluster names the leader)"}
	case errors.Is(err, ErrIdempotencyConflict):
		return &apiError{Status: http.StatusConflict, Code: "idempotency_conflict", Field: "Idempotency-Key", Message: err.Error() + "; use a new key for a different request"}
	case errors.Is(err, ErrHostDown):
		return &apiError{Status: http.StatusConflict, Code: "host_down", Message: err.Error()}
	case errors.Is(err, ErrJobNotFound):
		return &apiError{Status: http.StatusNotFound, Code: "job_not_found", Message: err.Error()}
	case errors.Is(err, ErrHostNotFound):
		return &apiError{Status: http.StatusNotFound, Code: "host_not_registered", Message: err.Error() + "; register first"}
	case errors.Is(err, ErrStaleEpoch):
		return &apiError{Status: http.StatusConflict, Code: "stale_epoch", Message: err.Error()}
	case errors.Is(err, ErrBadTransition):
		return &apiError{Status: http.StatusConflict, Code: "bad_transition", Message: err.Error()}
	case errors.Is(err, ErrJobExists):
		return &apiError{Status: http.StatusConflict, Code: "job_exists", Message: err.Error()}
	}
	return &apiError{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	ctx.SetContentType("application/json")
	ctx.SetStatusCode(status)
	b, err := json.Marshal(v)
	if err != nil {
		ctx.SetStatusCode(http.StatusInternalServerError)
		b = []byte(`{"error":{"code":"internal","message":"encode response"}}`)
	}
	ctx.SetBody(append(b, '\n'))
}

func writeError(ctx *fasthttp.RequestCtx, err error) {
	ae := toAPIError(err)
	if ae.Leader != "" {
		ctx.Response.Header.Set(leaderHeader, ae.Leader)
	}
	writeJSON(ctx, ae.Status, proto.APIError{Error: proto.ErrorBody{Code: ae.Code, Message: ae.Message, Field: ae.Field, Leader: ae.Leader}})
}

// writeAPIError writes err, adding the leader hint to answers that ask the
// client to retry elsewhere.
func (s *Server) writeAPIError(ctx *fasthttp.RequestCtx, err error) {
	ae := toAPIError(err)
	if leadershipCodes[ae.Code] && ae.Leader == "" {
		c := *ae
		c.Leader = s.leaderHint()
		ae = &c
	}
	writeError(ctx, ae)
}

// decodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data, and turns decoder errors into 400s that name the field.
func decodeStrict(body []byte, v any) error {
	if len(body) == 0 {
		return errBadRequest("empty_body", "", "request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytesReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return errBadRequest("malformed_json", "", "malformed JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &te):
			return errBadRequest("invalid_type", te.Field, "field %q must be %v, got JSON %s", te.Field, te.Type, te.Value)
		}
		if name, ok := unknownFieldName(err); ok {
			return errBadRequest("unknown_field", name, "unknown field %q", name)
		}
		return errBadRequest("malformed_json", "", "malformed JSON: %v", err)
	}
	if dec.More() {
		return errBadRequest("malformed_json", "", "trailing data after the JSON object")
	}
	return nil
}
