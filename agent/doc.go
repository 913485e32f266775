// Package agent is the daemon on every GPU host: it discovers the host's GPUs
// (NVML, or a simulated inventory it reports as such), carves their memory
// into slots, registers with the coordinator, heartbeats the host's live
// state (slots, the models each slot's worker holds, the blob cache), long-
// polls for assignments and runs each one: fetch the models into the
// content-addressed cache, load them into the slot's worker, run, store the
// outputs and report every transition.
//
// One goroutine per slot runs that slot's assignments in the order of their
// placement epochs, so a slot's worker never runs two jobs at once and the
// scheduler's queue-wait estimate holds.
package agent
