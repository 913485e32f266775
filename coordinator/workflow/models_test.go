package workflow

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// sdxlWorkflow is an SDXL text-to-image workflow as ComfyUI's "Export (API)"
// writes it: checkpoint, a LoRA in a subfolder, a separate VAE, and a 4x
// upscale of the decoded image, wired with links.
const sdxlWorkflow = `{
  "3": {"class_type": "KSampler", "_meta": {"title": "KSampler"}, "inputs": {
    "seed": 156680208700286, "steps": 30, "cfg": 7, "sampler_name": "dpmpp_2m", "scheduler": "karras",
    "denoise": 1, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
  "4": {"class_type": "CheckpointLoaderSimple", "_meta": {"title": "Load Checkpoint"},
    "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
  "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
  "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk, volumetric light", "clip": ["10", 1]}},
  "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, watermark", "clip": ["10", 1]}},
  "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["11", 0]}},
  "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "hearth", "images": ["13", 0]}},
  "10": {"class_type": "LoraLoader", "_meta": {"title": "Load LoRA"}, "inputs": {
    "lora_name": "styles/pixel-art-xl.safetensors", "strength_model": 0.8, "strength_clip": 0.8,
    "model": ["4", 0], "clip": ["4", 1]}},
  "11": {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}},
  "12": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x-UltraSharp.pth"}},
  "13": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["12", 0], "image": ["8", 0]}}
}`

func mustParse(t *testing.T, s string) Workflow {
	t.Helper()
	w, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return w
}

func uses(ms []ModelUse) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%s %s.%s %s\n", m.Node, m.ClassType, m.Input, m.Name())
	}
	return b.String()
}

func TestModelsSDXL(t *testing.T) {
	got, err := mustParse(t, sdxlWorkflow).Models()
	if err != nil {
		t.Fatalf("Models: %v", err)
	}
	want := []ModelUse{
		{Node: "4", ClassType: "CheckpointLoaderSimple", Input: "ckpt_name", Folder: "checkpoints", File: "sd_xl_base_1.0.safetensors"},
		{Node: "10", ClassType: "LoraLoader", Input: "lora_name", Folder: "loras", File: "styles/pixel-art-xl.safetensors"},
		{Node: "11", ClassType: "VAELoader", Input: "vae_name", Folder: "vae", File: "sdxl_vae.safetensors"},
		{Node: "12", ClassType: "UpscaleModelLoader", Input: "model_name", Folder: "upscale_models", File: "4x-UltraSharp.pth"},
	}
	if uses(got) != uses(want) || len(got) != len(want) {
		t.Fatalf("Models() =\n%swant\n%s", uses(got), uses(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("use %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if got[0].Name() != "checkpoints/sd_xl_base_1.0.safetensors" {
		t.Errorf("Name() = %q", got[0].Name())
	}
}

func TestModelsSkipsLinksBuiltinsAndDuplicates(t *testing.T) {
	w := mustParse(t, `{
		"1": {"class_type": "PrimitiveString", "inputs": {"value": "flux1-dev.safetensors"}},
		"2": {"class_type": "UNETLoader", "inputs": {"unet_name": ["1", 0], "weight_dtype": "default"}},
		"3": {"class_type": "VAELoader", "inputs": {"vae_name": "taesdxl"}},
		"4": {"class_type": "VAELoader", "inputs": {"vae_name": "pixel_space"}},
		"5": {"class_type": "DualCLIPLoader", "inputs": {"clip_name2": "t5xxl_fp16.safetensors", "clip_name1": "clip_l.safetensors", "type": "flux"}},
		"6": {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}},
		"7": {"class_type": "CheckpointLoader", "inputs": {"config_name": "v1-inference.yaml", "ckpt_name": "v1-5.ckpt"}},
		"8": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["2", 0]}},
		"9": {"class_type": "SomeCustomLoader", "inputs": {"ckpt_name": "../../etc/passwd"}}
	}`)
	got, err := w.Models()
	if err != nil {
		t.Fatalf("Models: %v", err)
	}
	want := "5 DualCLIPLoader.clip_name1 text_encoders/clip_l.safetensors\n" +
		"5 DualCLIPLoader.clip_name2 text_encoders/t5xxl_fp16.safetensors\n" +
		"7 CheckpointLoader.ckpt_name checkpoints/v1-5.ckpt\n" +
		"7 CheckpointLoader.config_name configs/v1-inference.yaml\n"
	if uses(got) != want {
		t.Fatalf("Models() =\n%swant\n%s", uses(got), want)
	}
}

func TestModelsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, value, msg string
	}{
		{"number", `7`, "a number"},
		{"null", `null`, "null"},
		{"bool", `true`, "a boolean"},
		{"object", `{"name": "x"}`, "an object"},
		{"not a link", `[4, 0]`, "a list"},
		{"empty", `""`, "empty"},
		{"absolute", `"/models/sd.safetensors"`, "absolute"},
		{"drive letter", `"C:/models/sd.safetensors"`, "absolute"},
		{"parent", `"../secrets/sd.safetensors"`, `".."`},
		{"parent inside", `"sdxl/../../sd.safetensors"`, `".."`},
		{"escaped parent", `"..\u002fsd.safetensors"`, `".."`},
		{"backslash", `"sdxl\\sd.safetensors"`, "backslashes"},
		{"dot segment", `"./sd.safetensors"`, `"."`},
		{"empty segment", `"sdxl//sd.safetensors"`, "empty path segment"},
		{"trailing slash", `"sdxl/"`, "empty path segment"},
		{"control character", `"sd\u0000.safetensors"`, "control character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := mustParse(t, `{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": `+tc.value+`}},
				"5": {"class_type": "VAELoader", "inputs": {"vae_name": "ok.safetensors"}}}`)
			got, err := w.Models()
			var we *Error
			if !errors.As(err, &we) {
				t.Fatalf("Models() = %v, %v; want *Error", got, err)
			}
			if we.Field != "workflow.4.inputs.ckpt_name" {
				t.Errorf("Field = %q", we.Field)
			}
			if !strings.Contains(we.Message, tc.msg) {
				t.Errorf("Message = %q, want it to mention %q", we.Message, tc.msg)
			}
		})
	}
}

func TestRegister(t *testing.T) {
	t.Cleanup(func() { delete(Loaders, "MyLoader") })
	Register("MyLoader", LoaderInput{Input: "model", Folder: "my_models", Builtin: []string{"none"}})

	w := mustParse(t, `{"1": {"class_type": "MyLoader", "inputs": {"model": "mine.bin"}},
		"2": {"class_type": "MyLoader", "inputs": {"model": "none"}}}`)
	got, err := w.Models()
	if err != nil || uses(got) != "1 MyLoader.model my_models/mine.bin\n" {
		t.Fatalf("Models() = %q, %v", uses(got), err)
	}
}

// TestLoaderTable guards the table against typos that would make a loader
// silently produce uncatalogued names.
func TestLoaderTable(t *testing.T) {
	if len(Loaders) < 19 {
		t.Fatalf("Loaders has %d entries, want the 19 core loaders", len(Loaders))
	}
	for ct, inputs := range Loaders {
		if len(inputs) == 0 {
			t.Errorf("%s has no inputs", ct)
		}
		for _, li := range inputs {
			if li.Input == "" || li.Folder == "" || strings.ContainsAny(li.Folder, "/\\ ") {
				t.Errorf("%s: bad loader input %+v", ct, li)
			}
		}
	}
}
