// Package gpu finds the host's GPUs and carves each one's memory into a pool
// of fixed-size VRAM slots that workers run in.
//
// Discovery sits behind the Devices interface so that everything above it
// (heartbeats, slot pools, the scheduler's view of a host) is the same with
// or without real hardware:
//
//   - NewNVML reads real devices through NVIDIA's management library
//     (go-nvml). The library is loaded at run time, so a binary built with
//     cgo starts on any host and only the call fails where no driver is
//     installed. A binary built without cgo has no NVML support at all.
//   - NewSimulated reports a fixed inventory taken from configuration. It is
//     the documented stand-in for hosts without a GPU (laptops, CI, the demo):
//     names and sizes are whatever the config says, usage and sensors read as
//     zero, and nothing is ever actually allocated on a device.
//
// Detect is the factory the agent calls at start: it tries NVML and, when
// that fails for any reason, logs a warning that says why and that the
// simulated inventory is in use, then returns it. It never fails, so an agent
// always starts; the warning and Devices.Kind ("nvml" or "simulated", sent to
// the coordinator in the host's registration) make the choice visible.
//
// A SlotPool is one GPU's memory minus a reserve (for the driver, CUDA
// context and other tenants), split into slots of equal size. A worker holds
// k contiguous slots; the pool hands out runs first-fit and reports its
// fragmentation so the scheduler can prefer placements that keep large runs
// free. Pools are plain bookkeeping: they never touch the device.
package gpu
