package workflow

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

// FuzzParse checks that Parse never panics on any body a client could send,
// that whatever it accepts is a well-formed workflow, and that Models on an
// accepted workflow yields only names the catalog could hold (or a field
// error), never a path that escapes a models folder.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		sdxlWorkflow,
		`{"1": {"class_type": "Note"}}`,
		`{"1": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}, "2": {"class_type": "VAEDecode", "inputs": {"vae": ["1", 0]}}}`,
		`{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "../../x"}}}`,
		`{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["4", 0]}}}`,
		`{"4": {"class_type": "LoraLoader", "inputs": {"lora_name": "a\\b.safetensors", "model": ["9", 0]}}}`,
		`{"10:2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "x/./y", "clip_name2": 3}, "_meta": {"title": "t"}}}`,
		`{"4": {"class_type": "", "inputs": []}}`,
		`{"4": {"class_type": "X", "extra": 1}}`,
		`{"4": ["4", 0]}`,
		`{"4": {"class_type": "X", "inputs": {"a": ["4", 1e999]}}}`,
		`{}`,
		`[]`,
		`null`,
		`{"4": {"class_type": "UNETLoader", "inputs": {"unet_name": "C:/m.safetensors"}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		// The fast path accepts exactly what the careful one does.
		fw, fastOK := parseFast(raw)
		cw, cerr := parseCareful(raw)
		if fastOK && (cerr != nil || !reflect.DeepEqual(fw, cw)) {
			t.Fatalf("parseFast accepted what parseCareful did not: %v", cerr)
		}
		w, err := Parse(raw)
		if err != nil {
			var we *Error
			if !errors.As(err, &we) || !strings.HasPrefix(we.Field, "workflow") {
				t.Fatalf("Parse error %v (%T) is not a *Error with a workflow field", err, err)
			}
			if w != nil {
				t.Fatalf("Parse returned a workflow with error %v", err)
			}
			return
		}
		if len(w) == 0 || len(w) > MaxNodes {
			t.Fatalf("Parse accepted %d nodes", len(w))
		}
		for id, n := range w {
			if id == "" || strings.TrimSpace(n.ClassType) == "" || n.Inputs == nil {
				t.Fatalf("Parse accepted node %q = %+v", id, n)
			}
			for name, v := range n.Inputs {
				if target, out, ok := LinkTarget(v); ok {
					if _, exists := w[target]; !exists || out < 0 {
						t.Fatalf("Parse accepted %s.%s = %s, a bad link", id, name, v)
					}
				}
			}
		}

		models, modelsErr := w.Models()
		if err := modelsErr; err != nil {
			var we *Error
			if !errors.As(err, &we) || !strings.HasPrefix(we.Field, "workflow.") || !strings.Contains(we.Field, ".inputs.") {
				t.Fatalf("Models error %v (%T) does not name an input", err, err)
			}
		}
		for _, m := range models {
			if err := proto.ValidateModelName(m.Name()); err != nil {
				t.Fatalf("Models returned %q: %v", m.Name(), err)
			}
			if m.Folder == "" || m.File == "" || w[m.Node].ClassType != m.ClassType {
				t.Fatalf("Models returned %+v", m)
			}
		}

		// What was accepted survives a round trip unchanged in meaning: the
		// coordinator stores the workflow and hands it to a worker later.
		again, err := json.Marshal(w)
		if err != nil {
			t.Fatalf("Marshal of an accepted workflow: %v", err)
		}
		w2, err := Parse(again)
		if err != nil {
			t.Fatalf("re-Parse of %s: %v", again, err)
		}
		models2, err2 := w2.Models()
		if fmt.Sprint(modelsErr) != fmt.Sprint(err2) || uses(models) != uses(models2) {
			t.Fatalf("round trip changed Models: %q, %v -> %q, %v", uses(models), modelsErr, uses(models2), err2)
		}
	})
}
