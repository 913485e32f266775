package workflow

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/hearth-gpu/hearth/proto"
)

// MaxNodes bounds a workflow. Real ones have tens to a few hundred nodes;
// the bound keeps a hostile body from costing more than it is worth.
const MaxNodes = 10000

// Node is one node of an API-format workflow.
type Node struct {
	ClassType string                     `json:"class_type"`
	Inputs    map[string]json.RawMessage `json:"inputs"`
	Meta      json.RawMessage            `json:"_meta,omitempty"`
}

// Workflow maps node ids to nodes.
type Workflow map[string]Node

// Error is a problem with a submitted workflow. Field locates it, e.g.
// "workflow.4.inputs.ckpt_name"; Message says what is wrong in words a
// client can act on.
type Error struct {
	Field   string
	Message string
	err     error // the underlying cause, when there is one
}

func (e *Error) Error() string { return "workflow: " + e.Field + ": " + e.Message }

// Unwrap returns the cause, e.g. a *json.SyntaxError.
func (e *Error) Unwrap() error { return e.err }

// FieldError converts e for the API's {"error": {"code", "message", "field"}}.
func (e *Error) FieldError() *proto.FieldError {
	return &proto.FieldError{Field: e.Field, Message: e.Message}
}

func errorf(field, format string, args ...any) *Error {
	return &Error{Field: field, Message: fmt.Sprintf(format, args...)}
}

func nodeField(id string, rest ...string) string {
	return strings.Join(append([]string{"workflow", id}, rest...), ".")
}

// Parse checks raw is an API-format workflow and decodes it. Every failure
// is an *Error naming the field; when a workflow has several problems, the
// first in node order is reported, so the answer is the same on every try.
func Parse(raw []byte) (Workflow, error) {
	if !isObject(raw) {
		return nil, errorf("workflow", "must be a JSON object mapping node ids to nodes (ComfyUI's API format)")
	}
	if w, ok := parseFast(raw); ok {
		return w, nil
	}
	return parseCareful(raw)
}

// parseCareful is Parse one level at a time, so that it can name the field
// at fault.
func parseCareful(raw []byte) (Workflow, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, &Error{Field: "workflow", Message: "is not valid JSON: " + err.Error(), err: err}
	}
	if len(top) == 0 {
		return nil, errorf("workflow", "has no nodes")
	}
	if len(top) > MaxNodes {
		return nil, errorf("workflow", "has %d nodes, more than the %d allowed", len(top), MaxNodes)
	}
	w := make(Workflow, len(top))
	ids := sortedIDs(top)
	for _, id := range ids {
		n, err := parseNode(id, top[id])
		if err != nil {
			return nil, err
		}
		w[id] = n
	}
	// Links are checked once every node is known, in the same order.
	for _, id := range ids {
		n := w[id]
		for _, name := range sortedKeys(n.Inputs) {
			if err := checkLink(w, id, name, n.Inputs[name]); err != nil {
				return nil, err
			}
		}
	}
	return w, nil
}

// parseFast decodes a well-formed workflow with one pass fewer over its
// bytes than the careful path below (it decodes the top two levels at
// once). It gives up on anything unusual, and the careful path then finds
// and names the problem, so both accept exactly the same workflows.
func parseFast(raw []byte) (Workflow, bool) {
	var top map[string]map[string]json.RawMessage
	if json.Unmarshal(raw, &top) != nil || len(top) == 0 || len(top) > MaxNodes {
		return nil, false
	}
	w := make(Workflow, len(top))
	for id, keys := range top {
		if id == "" || keys == nil {
			return nil, false
		}
		for k := range keys {
			if k != "class_type" && k != "inputs" && k != "_meta" {
				return nil, false
			}
		}
		n := Node{Meta: keys["_meta"], Inputs: map[string]json.RawMessage{}}
		ct := keys["class_type"]
		if !isString(ct) || json.Unmarshal(ct, &n.ClassType) != nil || strings.TrimSpace(n.ClassType) == "" {
			return nil, false
		}
		if in, ok := keys["inputs"]; ok && !isNull(in) {
			if !isObject(in) || json.Unmarshal(in, &n.Inputs) != nil {
				return nil, false
			}
		}
		w[id] = n
	}
	for id, n := range w {
		for name, v := range n.Inputs {
			if checkLink(w, id, name, v) != nil {
				return nil, false
			}
		}
	}
	return w, true
}

func parseNode(id string, raw json.RawMessage) (Node, error) {
	if id == "" {
		return Node{}, errorf("workflow", "has a node with an empty id")
	}
	if !isObject(raw) {
		return Node{}, errorf(nodeField(id), "must be an object with class_type and inputs")
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return Node{}, &Error{Field: nodeField(id), Message: "is not valid JSON: " + err.Error(), err: err}
	}
	for _, k := range sortedKeys(keys) {
		if k != "class_type" && k != "inputs" && k != "_meta" {
			return Node{}, errorf(nodeField(id, k), "is not a node field; an API-format node has only class_type, inputs and _meta (was the UI's workflow format sent instead of the API format?)")
		}
	}

	n := Node{Meta: keys["_meta"]}
	ct, ok := keys["class_type"]
	if !ok {
		return Node{}, errorf(nodeField(id, "class_type"), "is required")
	}
	if !isString(ct) || json.Unmarshal(ct, &n.ClassType) != nil {
		return Node{}, errorf(nodeField(id, "class_type"), "must be a string naming the node type")
	}
	if strings.TrimSpace(n.ClassType) == "" {
		return Node{}, errorf(nodeField(id, "class_type"), "must not be empty")
	}

	n.Inputs = map[string]json.RawMessage{}
	if in, ok := keys["inputs"]; ok && !isNull(in) {
		if !isObject(in) || json.Unmarshal(in, &n.Inputs) != nil {
			return Node{}, errorf(nodeField(id, "inputs"), "must be an object mapping input names to values")
		}
	}
	return n, nil
}

// maxOutputIndex bounds a link's output index; no node has this many outputs.
const maxOutputIndex = 1 << 16

// LinkTarget reports whether v is a link ["node id", output index] and, if
// so, what it points at. It follows ComfyUI's own test: a two-element array
// of a string and a number. ok is true for a link-shaped value even when its
// index is not a valid one (output is then -1), so that Parse can refuse it
// instead of treating it as a literal.
func LinkTarget(v json.RawMessage) (node string, output int, ok bool) {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || v[0] != '[' {
		return "", 0, false
	}
	var elems []json.RawMessage
	if json.Unmarshal(v, &elems) != nil || len(elems) != 2 || !isString(elems[0]) || !isNumber(elems[1]) {
		return "", 0, false
	}
	if json.Unmarshal(elems[0], &node) != nil {
		return "", 0, false
	}
	// A number too large for a float64 is still a (broken) link.
	var idx float64
	if json.Unmarshal(elems[1], &idx) != nil || idx < 0 || idx >= maxOutputIndex || idx != math.Trunc(idx) {
		return node, -1, true
	}
	return node, int(idx), true
}

func checkLink(w Workflow, id, input string, v json.RawMessage) error {
	target, output, ok := LinkTarget(v)
	if !ok {
		return nil
	}
	field := nodeField(id, "inputs", input)
	if output < 0 {
		return errorf(field, "links to an output index that is not a whole number between 0 and %d", maxOutputIndex-1)
	}
	if _, exists := w[target]; !exists {
		return errorf(field, "links to node %q, which is not in the workflow", target)
	}
	return nil
}

func firstByte(v []byte) byte {
	v = bytes.TrimLeft(v, " \t\r\n")
	if len(v) == 0 {
		return 0
	}
	return v[0]
}

func isObject(v []byte) bool { return firstByte(v) == '{' }
func isString(v []byte) bool { return firstByte(v) == '"' }
func isNumber(v []byte) bool {
	c := firstByte(v)
	return c == '-' || (c >= '0' && c <= '9')
}
func isNull(v []byte) bool { return string(bytes.TrimSpace(v)) == "null" }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// sortedIDs orders node ids the way people read them: "2" before "10", and
// ComfyUI's subgraph ids ("10:2") segment by segment.
func sortedIDs[V any](m map[string]V) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return lessID(ids[i], ids[j]) })
	return ids
}

func lessID(a, b string) bool {
	as, bs := strings.Split(a, ":"), strings.Split(b, ":")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if c := compareSegment(as[i], bs[i]); c != 0 {
			return c < 0
		}
	}
	if len(as) != len(bs) {
		return len(as) < len(bs)
	}
	return a < b // equal as numbers ("01" and "1"): any fixed order will do
}

// compareSegment puts numbers first, in numeric order (compared as digit
// strings, so no id is too long to order), then everything else by bytes.
func compareSegment(a, b string) int {
	an, bn := isDigits(a), isDigits(b)
	switch {
	case an && bn:
		a, b = strings.TrimLeft(a, "0"), strings.TrimLeft(b, "0")
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return strings.Compare(a, b)
	case an:
		return -1
	case bn:
		return 1
	}
	return strings.Compare(a, b)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
