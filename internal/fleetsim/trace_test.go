package fleetsim

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestTraceRoundTrip(t *testing.T) {
	for _, w := range StandardWorkloads(1, 600, 3) {
		t.Run(w.Name, func(t *testing.T) {
			tr := mustGenerate(t, w)
			// A priority and a VRAM override travel too.
			tr.Jobs[0].Priority, tr.Jobs[0].VRAMBytes = -5, 20e9
			var buf bytes.Buffer
			if err := tr.WriteJSONL(&buf); err != nil {
				t.Fatal(err)
			}
			if lines := strings.Count(buf.String(), "\n"); lines != len(tr.Catalog)+len(tr.Jobs) {
				t.Fatalf("%d lines for %d models and %d jobs", lines, len(tr.Catalog), len(tr.Jobs))
			}
			got, err := ReadJSONL(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tr) {
				t.Fatal("the trace read back differs from the one written")
			}
		})
	}
}

func TestReadJSONLSkipsCommentsAndFillsDigests(t *testing.T) {
	in := `# a hand-written trace

{"model": {"name": "checkpoints/a.safetensors", "size": 2000000000, "kind": "checkpoint", "family": "sd15"}}
   # indented comment
{"job": {"id": "j1", "at_s": 0, "models": ["checkpoints/a.safetensors"], "family": "sd15", "run_s": 3}}
{"job": {"id": "j2", "at_s": 0, "models": ["checkpoints/a.safetensors"], "family": "sd15", "run_s": 2.5, "priority": 10}}
`
	tr, err := ReadJSONL(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := &Trace{
		Catalog: []Model{{Name: "checkpoints/a.safetensors", Digest: digestOfName("checkpoints/a.safetensors"), Size: 2e9, Kind: KindCheckpoint, Family: FamilySD15}},
		Jobs: []Job{
			{ID: "j1", Models: []string{"checkpoints/a.safetensors"}, Family: FamilySD15, RunS: 3},
			{ID: "j2", Models: []string{"checkpoints/a.safetensors"}, Family: FamilySD15, RunS: 2.5, Priority: 10},
		},
	}
	if !reflect.DeepEqual(tr, want) {
		t.Fatalf("ReadJSONL = %+v, want %+v", tr, want)
	}
}

func TestReadJSONLRejects(t *testing.T) {
	const (
		ckpt = `{"model": {"name": "c", "size": 5, "kind": "checkpoint", "family": "sdxl"}}`
		lora = `{"model": {"name": "l", "size": 5, "kind": "lora", "family": "sdxl"}}`
	)
	job := func(id string, at float64, extra string) string {
		return fmt.Sprintf(`{"job": {"id": %q, "at_s": %v, "models": ["c"], "family": "sdxl", "run_s": 7%s}}`, id, at, extra)
	}
	for _, tc := range []struct {
		name  string
		lines []string
		line  int
		want  string
	}{
		{"unknown field in a model", []string{`{"model": {"name": "c", "size": 5, "kind": "checkpoint", "family": "sdxl", "color": "red"}}`}, 1, `unknown field "color"`},
		{"unknown field in a job", []string{ckpt, job("j1", 0, `, "gpu": "h100"`)}, 2, `unknown field "gpu"`},
		{"unknown key", []string{ckpt, `{"jobs": {}}`}, 2, `unknown field "jobs"`},
		{"neither key", []string{"# catalog", ckpt, `{}`}, 3, `neither "model" nor "job"`},
		{"both keys", []string{ckpt, `{"model": {"name": "x"}, "job": {"id": "j"}}`}, 2, `both "model" and "job"`},
		{"not JSON", []string{ckpt, `{"job": `}, 2, "not a trace object"},
		{"two objects", []string{ckpt + " " + ckpt}, 1, "more than one JSON value"},
		{"duplicate model", []string{ckpt, "", ckpt}, 3, `model "c" listed twice`},
		{"model after jobs", []string{ckpt, job("j1", 0, ""), lora}, 3, "after the first job"},
		{"zero size", []string{`{"model": {"name": "c", "size": 0, "kind": "checkpoint", "family": "sdxl"}}`}, 1, "size 0: must be positive"},
		{"negative size", []string{`{"model": {"name": "c", "size": -3, "kind": "checkpoint", "family": "sdxl"}}`}, 1, "size -3"},
		{"unknown kind", []string{`{"model": {"name": "c", "size": 5, "kind": "unet", "family": "sdxl"}}`}, 1, `unknown kind "unet"`},
		{"unknown model family", []string{`{"model": {"name": "c", "size": 5, "kind": "lora", "family": "sd3"}}`}, 1, `unknown family "sd3"`},
		{"bad digest", []string{`{"model": {"name": "c", "digest": "md5:00", "size": 5, "kind": "lora", "family": "sdxl"}}`}, 1, "digest"},
		{"nameless model", []string{`{"model": {"size": 5, "kind": "lora", "family": "sdxl"}}`}, 1, "no name"},
		{"duplicate job", []string{ckpt, job("j1", 0, ""), job("j1", 1, "")}, 3, `job "j1" listed twice`},
		{"unknown model", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": ["c", "l"], "family": "sdxl", "run_s": 7}}`}, 2, `model "l" is not in the catalog`},
		{"model twice in a job", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": ["c", "c"], "family": "sdxl", "run_s": 7}}`}, 2, `names model "c" twice`},
		{"out of order", []string{ckpt, job("j1", 5, ""), "# later", job("j2", 4.5, "")}, 4, "before the previous job's 5"},
		{"negative time", []string{ckpt, job("j1", -1, "")}, 2, "at_s -1"},
		{"NaN time", []string{ckpt, `{"job": {"id": "j1", "at_s": NaN, "models": ["c"], "family": "sdxl", "run_s": 7}}`}, 2, "invalid character"},
		{"no models", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": [], "family": "sdxl", "run_s": 7}}`}, 2, "names no models"},
		{"zero run time", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": ["c"], "family": "sdxl", "run_s": 0}}`}, 2, "run_s 0: must be positive"},
		{"negative run time", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": ["c"], "family": "sdxl", "run_s": -2}}`}, 2, "run_s -2"},
		{"negative VRAM", []string{ckpt, job("j1", 0, `, "vram_bytes": -1`)}, 2, "vram_bytes -1"},
		{"absurd priority", []string{ckpt, job("j1", 0, `, "priority": 5000`)}, 2, "priority 5000"},
		{"unknown job family", []string{ckpt, `{"job": {"id": "j1", "at_s": 0, "models": ["c"], "family": "pony", "run_s": 7}}`}, 2, `unknown family "pony"`},
		{"job without id", []string{ckpt, `{"job": {"at_s": 0, "models": ["c"], "family": "sdxl", "run_s": 7}}`}, 2, "no id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadJSONL(strings.NewReader(strings.Join(tc.lines, "\n")))
			prefix := fmt.Sprintf("fleetsim: trace line %d: ", tc.line)
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadJSONL: %v; want %q…%q", err, prefix, tc.want)
			}
		})
	}
}

func TestReadJSONLRejectsLongLines(t *testing.T) {
	in := `{"model": {"name": "` + strings.Repeat("x", maxTraceLine) + `"}}`
	_, err := ReadJSONL(strings.NewReader("# first\n" + in))
	if err == nil || !strings.HasPrefix(err.Error(), "fleetsim: trace line 2: longer than") {
		t.Fatalf("ReadJSONL: %v, want line 2 too long", err)
	}
}
