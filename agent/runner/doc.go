// Package runner drives the processes that execute jobs on a GPU slot: a
// long-lived worker that keeps models resident (the vram tier, which is what
// makes a repeated job fast) or one process per job that keeps nothing warm.
//
// A Runner is used by one slot: the agent calls Load, then Run, one job at a
// time. Every Runner is nevertheless safe for concurrent use: Resident never
// waits for a running job, and Close interrupts it.
//
// # Worker protocol (version 1)
//
// A worker is any program that speaks JSON lines on its standard input and
// output. The reference implementation is package refworker; a Python worker
// wrapping real models implements the same messages. The rules:
//
//   - One JSON object per line, UTF-8, terminated by "\n". A line may be up to
//     16 MiB; a longer line from the worker is a protocol violation and the
//     agent kills the worker.
//   - stdout carries protocol messages only. Anything a worker (or a library
//     it imports) prints that is not a JSON object is logged by the agent and
//     otherwise ignored, but a Python worker should point sys.stdout at
//     sys.stderr for libraries and keep the real stdout for the protocol.
//   - stderr is free text: the agent logs it line by line and quotes the last
//     lines in the error when the worker dies.
//   - The worker's environment is the agent's plus WorkerConfig.Env; its
//     working directory is WorkerConfig.Dir. It runs in its own process
//     group, which the agent kills as a whole, so helper processes die with it.
//   - End of input (stdin closed) means shut down: cancel what runs, exit 0.
//
// Start. Once ready, the worker writes a hello. The agent waits for it for
// WorkerConfig.StartTimeout (default 30 s) and refuses another protocol
// version:
//
//	{"event":"hello","protocol":1,"name":"my-sdxl-worker","pid":4242}
//
// Requests. The agent sends requests carrying an "id" that increases from 1.
// Every request is answered by exactly one final response with the same id
// and an "ok" field; a failed request has "ok":false and an "error" text that
// says what went wrong, which the agent passes on to the user. Responses are
// matched by id, so a worker may answer in any order; today the agent sends
// one load or run at a time per worker, plus the cancel described below.
//
// load makes models resident. Each model names a local file the agent has
// already verified; size is in bytes. Loading a digest that is already
// resident must be instant. "ok":true means every listed model is resident;
// "loaded" lists the request's digests that are resident now (on failure,
// those that did load before it), and "load_s" the seconds it took:
//
//	→ {"id":1,"op":"load","models":[{"name":"checkpoints/sdxl.safetensors","digest":"sha256:…","path":"<cache>/blobs/…","size":6938078334}]}
//	← {"id":1,"ok":true,"loaded":["sha256:…"],"load_s":1.42}
//	← {"id":1,"ok":false,"loaded":[],"error":"file … has digest sha256:…, want sha256:…"}
//
// The agent tracks the slot's capacity itself: before a load that would not
// fit, it unloads the least recently used models the coming job does not
// need. A worker must free the memory (in PyTorch: drop the references, then
// torch.cuda.empty_cache()) before answering. Unloading a digest that is not
// resident is not an error:
//
//	→ {"id":2,"op":"unload","digests":["sha256:…"]}
//	← {"id":2,"ok":true}
//
// run executes one job. "kind" is "workflow" (input is a ComfyUI API-format
// prompt) or "worker" (input is the job's free-form payload); "models" lists
// the digests the job uses, in order, all of them loaded before. The worker
// writes its outputs into output_dir, an existing empty directory, and
// answers with their names relative to it. Before the answer it may send any
// number of progress events for the same id:
//
//	→ {"id":3,"op":"run","job_id":"j-01","kind":"workflow","input":{…},"models":["sha256:…"],"output_dir":"<jobs>/j-01/out"}
//	← {"id":3,"event":"progress","value":1,"max":20,"node":"3"}
//	← {"id":3,"ok":true,"outputs":["hearth_00001_.png"]}
//	← {"id":3,"ok":false,"error":"CUDA out of memory"}
//
// cancel asks the worker to stop request target as soon as it can. The
// worker answers the cancel itself at once ("ok":true even if the target has
// already finished) and ends the target with "ok":false, "error":"cancelled".
// If the target has not ended WorkerConfig.CancelTimeout (default 10 s) after
// the cancel was sent, the agent kills the worker; it is restarted, empty, on
// the next call:
//
//	→ {"id":4,"op":"cancel","target":3}
//	← {"id":4,"ok":true}
//	← {"id":3,"ok":false,"error":"cancelled"}
//
// A request with an unknown op is answered "ok":false. Fields the worker does
// not know must be ignored, so later agents can add some.
//
// # Failures
//
// When a worker exits, the call in flight fails with ErrWorkerExited and the
// worker's last stderr lines; its residency is gone. The next call starts a
// new process, waiting 0.1 s after the first failure and doubling up to 10 s
// while failures repeat; a successful request resets the wait. A job the
// worker refused ("ok":false) fails with ErrJobFailed and leaves the worker
// running.
package runner
