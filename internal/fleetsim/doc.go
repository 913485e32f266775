// Package fleetsim is a seeded, deterministic discrete-event simulation of
// a GPU fleet that drives the real scheduler package through its State and
// Planner interfaces, so that hearth's placement policy and the policies a
// user could pick instead are measured on the same jobs.
//
// The fleet is hosts of GPUs cut into VRAM slots. A slot's worker holds
// the models its jobs loaded and unloads the least recently used to make
// room; jobs on one GPU share its compute equally. Each host has a RAM
// tier (least recently used demoted first) and an NVMe cache evicting
// with cachefs's own policy; models come into a worker from RAM, from the
// host's disk (whose read bandwidth concurrent loads share), from a peer
// in the rack or elsewhere, or from the origin, whose total bandwidth every
// download in the fleet shares. The agent's habits are kept: a model a job
// used is promoted to RAM when the job ends, and one fetched from a peer
// or the origin is kept on disk.
//
// Traces are generated (Poisson or bursty arrivals; Zipf popularity that
// may drift, or a new model that suddenly takes a share of all jobs; the
// model sizes and run times of SD1.5, SDXL and Flux workflows) or read
// from JSONL. Each run reports the warm-start rate (jobs whose models were
// all in their slot's VRAM when their turn came) beside an upper bound
// (only a model's first job must be cold), time to start and latency
// percentiles, GPU busy time, bytes from the origin and from peers, and
// the policy's own time per job.
//
// What it leaves out, on purpose: a worker's VRAM residency does not pin
// blobs on disk; models of one job load one after another, each at its
// tier's rate (RAM and peer transfers do not contend); heartbeats reach
// the scheduler the moment a state changes; hosts never fail.
package fleetsim
