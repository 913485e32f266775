package workflow

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	many := func() string {
		var b strings.Builder
		b.WriteString("{")
		for i := 0; i <= MaxNodes; i++ {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(`"` + itoa(i) + `":{"class_type":"Note"}`)
		}
		b.WriteString("}")
		return b.String()
	}()
	for _, tc := range []struct {
		name, in, field, msg string
	}{
		{"array", `[1, 2]`, "workflow", "JSON object"},
		{"string", `"hello"`, "workflow", "JSON object"},
		{"null", `null`, "workflow", "JSON object"},
		{"empty body", ``, "workflow", "JSON object"},
		{"truncated", `{"4": {"class_type": "X"`, "workflow", "not valid JSON"},
		{"trailing data", `{"4": {"class_type": "X"}} {}`, "workflow", "not valid JSON"},
		{"empty workflow", ` { } `, "workflow", "no nodes"},
		{"too many nodes", many, "workflow", "more than"},
		{"empty node id", `{"": {"class_type": "X"}}`, "workflow", "empty id"},
		{"node is a string", `{"4": "CheckpointLoaderSimple"}`, "workflow.4", "must be an object"},
		{"node is null", `{"4": null}`, "workflow.4", "must be an object"},
		{"node is a list", `{"4": ["4", 0]}`, "workflow.4", "must be an object"},
		{"class_type missing", `{"4": {"inputs": {}}}`, "workflow.4.class_type", "required"},
		{"class_type empty", `{"4": {"class_type": ""}}`, "workflow.4.class_type", "empty"},
		{"class_type blank", `{"4": {"class_type": "  "}}`, "workflow.4.class_type", "empty"},
		{"class_type number", `{"4": {"class_type": 7}}`, "workflow.4.class_type", "string"},
		{"class_type null", `{"4": {"class_type": null}}`, "workflow.4.class_type", "string"},
		{"inputs a list", `{"4": {"class_type": "X", "inputs": ["a"]}}`, "workflow.4.inputs", "must be an object"},
		{"inputs a string", `{"4": {"class_type": "X", "inputs": "a"}}`, "workflow.4.inputs", "must be an object"},
		{"unknown node key", `{"4": {"class_type": "X", "widgets_values": []}}`, "workflow.4.widgets_values", "not a node field"},
		{"dangling link", `{"4": {"class_type": "X"}, "5": {"class_type": "Y", "inputs": {"model": ["9", 0]}}}`,
			"workflow.5.inputs.model", `node "9"`},
		{"negative output", `{"4": {"class_type": "X"}, "5": {"class_type": "Y", "inputs": {"model": ["4", -1]}}}`,
			"workflow.5.inputs.model", "output index"},
		{"fractional output", `{"4": {"class_type": "X"}, "5": {"class_type": "Y", "inputs": {"model": ["4", 0.5]}}}`,
			"workflow.5.inputs.model", "output index"},
		{"huge output", `{"4": {"class_type": "X"}, "5": {"class_type": "Y", "inputs": {"model": ["4", 1e400]}}}`,
			"workflow.5.inputs.model", "output index"},
		// With several bad nodes the first in node order is reported, every time.
		{"first error wins", `{"10": {"class_type": ""}, "9": {"class_type": 1}, "x": 3}`, "workflow.9.class_type", "string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := Parse([]byte(tc.in))
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("Parse = %v, %v; want *Error", w, err)
			}
			if we.Field != tc.field {
				t.Errorf("Field = %q, want %q (%v)", we.Field, tc.field, err)
			}
			if !strings.Contains(we.Message, tc.msg) {
				t.Errorf("Message = %q, want it to mention %q", we.Message, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "workflow: "+tc.field+": ") {
				t.Errorf("Error() = %q, want the package and field prefix", err)
			}
			if fe := we.FieldError(); fe.Field != we.Field || fe.Message != we.Message {
				t.Errorf("FieldError() = %+v", fe)
			}
		})
	}
}

func TestParseWrapsJSONErrors(t *testing.T) {
	_, err := Parse([]byte(`{"4": {"class_type": "X",}}`))
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		t.Fatalf("Parse = %v, want it to wrap a *json.SyntaxError", err)
	}
}

func TestParseAccepts(t *testing.T) {
	w, err := Parse([]byte(`{
		"1": {"class_type": "Note"},
		"2": {"class_type": "Note", "inputs": null, "_meta": {"title": "a note"}},
		"3": {"class_type": "KSampler", "inputs": {
			"seed": 42, "cfg": 7.5, "denoise": 1, "sampler_name": "euler", "add_noise": true,
			"model": ["1", 0], "positive": ["2", 1.0],
			"pair": [1, 2], "pair2": ["a", "b"], "triple": ["1", 0, 0], "obj": {"k": ["9", 0]}
		}},
		"10:2": {"class_type": "Custom", "inputs": {"x": ["3", 0]}, "_meta": null}
	}`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(w) != 4 || w["3"].ClassType != "KSampler" || len(w["3"].Inputs) != 11 {
		t.Fatalf("parsed %+v", w)
	}
	if w["1"].Inputs == nil || w["2"].Inputs == nil {
		t.Error("missing or null inputs should read as an empty map")
	}
	if string(w["2"].Meta) != `{"title": "a note"}` {
		t.Errorf("_meta = %s, want it kept as is", w["2"].Meta)
	}
	node, out, ok := LinkTarget(w["3"].Inputs["positive"])
	if !ok || node != "2" || out != 1 {
		t.Errorf("LinkTarget(positive) = %q, %d, %v", node, out, ok)
	}
	for _, in := range []string{"seed", "sampler_name", "pair", "pair2", "triple", "obj"} {
		if _, _, ok := LinkTarget(w["3"].Inputs[in]); ok {
			t.Errorf("input %s read as a link", in)
		}
	}
}

func TestSortedIDs(t *testing.T) {
	m := map[string]bool{}
	ids := []string{"2", "10", "1", "10:2", "10:10", "10:b", "a", "B", "01", "003", "99999999999999999999999"}
	for _, id := range ids {
		m[id] = true
	}
	got := strings.Join(sortedIDs(m), " ")
	want := "01 1 2 003 10 10:2 10:10 10:b 99999999999999999999999 B a"
	if got != want {
		t.Fatalf("sortedIDs = %s\nwant         %s", got, want)
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
