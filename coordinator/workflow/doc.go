// Package workflow reads ComfyUI workflows as clients submit them and works
// out which model files a workflow needs, so the coordinator can resolve
// them in the catalog and place the job where they are already warm.
//
// # Accepted format
//
// A workflow is ComfyUI's API format (what "Export (API)" saves and what
// ComfyUI's POST /prompt takes as "prompt"): one JSON object mapping a node
// id to a node,
//
//	{
//	  "4": {"class_type": "CheckpointLoaderSimple",
//	        "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
//	        "_meta": {"title": "Load Checkpoint"}},
//	  "6": {"class_type": "CLIPTextEncode",
//	        "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}}
//	}
//
// A node has a non-empty string class_type, an optional inputs object and
// an optional _meta value that is kept but not interpreted; any other key is
// refused, since it is most likely the UI's graph format sent by mistake. An
// input value is either a literal (string, number, bool, object, ...) or a
// link ["node id", output index] to another node's output; a link must name
// a node of the same workflow. Node types are not checked against ComfyUI's
// node list: custom nodes are legitimate, and the worker's ComfyUI is the
// authority on them.
//
// # Models
//
// Workflow.Models reads the literal file names from the inputs of known
// loader nodes (Loaders) and returns them as catalog names: the loader's
// ComfyUI models folder, a slash, and the file name as the workflow spells
// it ("checkpoints/sd_xl_base_1.0.safetensors"). A loader input that is a
// link is computed at run time and cannot be known in advance, so it is
// skipped. Every error names the offending field as
// "workflow.<node id>.inputs.<input>" (or .class_type, or the node itself)
// so the API can point at it.
package workflow
