// Package examples embeds the example ComfyUI workflows (API format) and
// the demo model set that `hearth demo` and `hearth dev` run against.
package examples

import (
	"embed"
	"io/fs"
	"path"
	"sort"
	"strings"
)

//go:embed workflows/*.json
var workflows embed.FS

// Workflow is one embedded example.
type Workflow struct {
	Name string // file name without .json
	JSON []byte
}

// Workflows returns the embedded workflows sorted by name.
func Workflows() []Workflow {
	entries, _ := fs.ReadDir(workflows, "workflows")
	var out []Workflow
	for _, e := range entries {
		b, err := workflows.ReadFile(path.Join("workflows", e.Name()))
		if err != nil {
			continue
		}
		out = append(out, Workflow{Name: strings.TrimSuffix(e.Name(), ".json"), JSON: b})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DemoModel is a model the demo generates into its local origin. The bytes
// are a valid safetensors file of deterministic pseudo-random weights.
type DemoModel struct {
	Name string // catalog name
	Size int64  // tensor bytes
}

// DemoModels are the models the example workflows need. Sizes are scaled
// down from the real ones (6.9 GB for SDXL base) so the demo runs in seconds.
var DemoModels = []DemoModel{
	{Name: "checkpoints/sd_xl_base_1.0.safetensors", Size: 96 << 20},
	{Name: "vae/sdxl_vae.safetensors", Size: 24 << 20},
	{Name: "loras/pixel_art_xl.safetensors", Size: 12 << 20},
	{Name: "upscale_models/4x_ultrasharp.pth", Size: 16 << 20},
}
