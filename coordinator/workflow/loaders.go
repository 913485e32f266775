package workflow

// LoaderInput is one input of a loader node that names a model file, and the
// ComfyUI models folder (folder_paths key) the file is looked up in.
type LoaderInput struct {
	Input  string
	Folder string
	// Builtin lists values that name something the node provides itself
	// rather than a file in Folder (VAELoader's "taesd", "pixel_space");
	// they are not models to fetch.
	Builtin []string
}

// builtinVAEs are VAELoader choices that ComfyUI assembles itself: the tiny
// autoencoders from encoder/decoder pairs in vae_approx, and pixel_space,
// which is no VAE at all.
var builtinVAEs = []string{"taesd", "taesdxl", "taesd3", "taef1", "taef2", "pixel_space"}

// Loaders maps a node class_type to the inputs that name model files. It
// holds ComfyUI's core loaders; extend it with Register (or by editing this
// table) for custom nodes. Folder names are ComfyUI's current ones:
// text_encoders (formerly clip) and diffusion_models (formerly unet).
var Loaders = map[string][]LoaderInput{
	"CheckpointLoaderSimple":    {{Input: "ckpt_name", Folder: "checkpoints"}},
	"CheckpointLoader":          {{Input: "ckpt_name", Folder: "checkpoints"}, {Input: "config_name", Folder: "configs"}},
	"ImageOnlyCheckpointLoader": {{Input: "ckpt_name", Folder: "checkpoints"}},
	"unCLIPCheckpointLoader":    {{Input: "ckpt_name", Folder: "checkpoints"}},
	"LoraLoader":                {{Input: "lora_name", Folder: "loras"}},
	"LoraLoaderModelOnly":       {{Input: "lora_name", Folder: "loras"}},
	"VAELoader":                 {{Input: "vae_name", Folder: "vae", Builtin: builtinVAEs}},
	"UNETLoader":                {{Input: "unet_name", Folder: "diffusion_models"}},
	"CLIPLoader":                {{Input: "clip_name", Folder: "text_encoders"}},
	"DualCLIPLoader": {
		{Input: "clip_name1", Folder: "text_encoders"},
		{Input: "clip_name2", Folder: "text_encoders"},
	},
	"TripleCLIPLoader": {
		{Input: "clip_name1", Folder: "text_encoders"},
		{Input: "clip_name2", Folder: "text_encoders"},
		{Input: "clip_name3", Folder: "text_encoders"},
	},
	"CLIPVisionLoader":     {{Input: "clip_name", Folder: "clip_vision"}},
	"ControlNetLoader":     {{Input: "control_net_name", Folder: "controlnet"}},
	"DiffControlNetLoader": {{Input: "control_net_name", Folder: "controlnet"}},
	"UpscaleModelLoader":   {{Input: "model_name", Folder: "upscale_models"}},
	"StyleModelLoader":     {{Input: "style_model_name", Folder: "style_models"}},
	"GLIGENLoader":         {{Input: "gligen_name", Folder: "gligen"}},
	"HypernetworkLoader":   {{Input: "hypernetwork_name", Folder: "hypernetworks"}},
	"PhotoMakerLoader":     {{Input: "photomaker_model_name", Folder: "photomaker"}},
}

// Register declares (or replaces) the model inputs of a loader node type,
// e.g. a custom node's. Call it from an init function: Loaders is read
// without a lock, so it must not change while workflows are being read.
func Register(classType string, inputs ...LoaderInput) {
	Loaders[classType] = append([]LoaderInput(nil), inputs...)
}
