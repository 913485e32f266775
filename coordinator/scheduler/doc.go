// Package scheduler decides where jobs run: hearth's placement policy,
// the fleet index it reads, and the policies users could pick instead,
// all behind the interfaces the coordinator and the fleet simulator drive
// alike.
//
// The shape is Nomad's: a Policy reads a State (the queue and the Fleet),
// decides a pass's placements, and hands them to a Planner; the
// coordinator's planner proposes them to Raft, where the FSM decides
// whether each still holds, and the simulator's starts them. Time comes
// from a Clock, the wall clock in the coordinator and the simulated one in
// the simulator. Nothing here does I/O, so every decision is testable
// without HTTP (see harness_test.go).
//
// # The fleet index
//
// Fleet is fed incrementally (registrations, heartbeats, inventory
// changes, job transitions) and keeps, for every blob, the slots that
// will hold it in VRAM and can take a job, and the hosts that cache it
// with per-rack counts of peer sources; and the open slots by size and by
// how busy their GPU is. A slot's residency is predicted the way its
// worker will manage it: its last reported residency, then each placed
// job's models loaded in turn, least recently used evicted first to fit
// the slot's capacity. Indexes are ordered sets without maps, so two
// fleets fed the same events iterate alike and the simulator stays
// deterministic.
//
// # hearth's policy
//
// Scheduler scores a few dozen candidates per job drawn from the indexes
// (never a scan of the fleet) by the start it can expect there, all costs
// counted: the wait for the slot's current job, each missing model's load
// from the tier it sits in on that host (a disk read waiting behind the
// reads already placed on that host), the time it would share its GPU
// with other slots' jobs, and what evicting the slot's other models to
// make room would cost the jobs that want them. Binding is late: a job
// goes only to a slot that can start it now or right after its one
// current job, and otherwise waits in the global queue, so it takes
// whichever slot frees first. A pass with nothing new (no slot opened, no
// residency or cache changed, the same queue) does nothing.
//
// After a job, a slot with room warms what jobs of the same class (the
// same largest model) were most often asked for with it: LoRAs and VAEs
// are small, and a job finds them already loaded. The fleet simulator
// (internal/fleetsim) is where each of these terms earned its place; the
// README gives the figures.
package scheduler
