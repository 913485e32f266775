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
// An NVML reading always has identity and memory; without them the device
// is an error. Everything else is optional: each function is looked up in the
// driver at init (calling one an older driver lacks would abort the process)
// and, when it is absent or the board answers NOT_SUPPORTED, no permission or
// any other failure, the field keeps its zero value and the device is still
// reported:
//
//   - utilization and temperature;
//   - Processes, the compute processes and the memory each holds
//     (nvmlDeviceGetComputeRunningProcesses, newest version the driver has);
//     memory the driver cannot attribute, under MIG or for another user's
//     process, reads as 0 with the PID kept;
//   - MIGEnabled, the current (not pending) MIG mode;
//   - ECCUncorrected, the volatile uncorrected ECC count;
//   - Fault, a reason the device should take no new work: retired pages
//     pending, a row remapping pending or failed, and the last critical XID
//     (48, 63, 64, 74, 79, 92, 94, 95) the driver reported. XIDs arrive
//     through an NVML event set registered once at init and drained without
//     waiting on each reading; a seen XID stays until the agent restarts,
//     since NVML sends nothing when the condition clears.
//
// A GPU that has fallen off the bus (GPU_IS_LOST from any call) fails the
// whole reading with an error wrapping ErrGPULost, so the agent reports
// itself degraded instead of placing work around a dead device. Simulated
// devices report all of these as zero.
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
