package gpu

import (
	"errors"
	"fmt"
	"log/slog"
)

// Detect returns the host's devices: NVML when it initializes and reports at
// least one GPU, otherwise the simulated inventory sim (DefaultSimGPU when
// sim is empty). It never fails, so an agent always starts; the fallback is
// logged as a warning that says why NVML was not used, because a GPU host
// quietly running on simulated devices would accept jobs it cannot run.
func Detect(logger *slog.Logger, sim []SimGPU) Devices {
	return detect(logger, sim, NewNVML)
}

// detect takes the NVML constructor as a parameter so tests can exercise
// both outcomes on any host.
func detect(logger *slog.Logger, sim []SimGPU, open func() (Devices, error)) Devices {
	if logger == nil {
		logger = slog.Default()
	}
	devs, first, err := tryNVML(open)
	if err == nil {
		logger.Info("gpu: using NVML", "devices", len(first), "gpus", describe(first))
		return devs
	}
	if len(sim) == 0 {
		sim = []SimGPU{DefaultSimGPU}
	}
	logger.Warn("gpu: NVML is unavailable, using the simulated GPU inventory instead; jobs will not run on real GPUs",
		"reason", err.Error(), "simulated", describeSim(sim))
	return NewSimulated(sim)
}

// tryNVML opens NVML and takes one reading, so a library that initializes
// but cannot read its devices, or has none, counts as unavailable too.
func tryNVML(open func() (Devices, error)) (Devices, []Device, error) {
	d, err := open()
	if err != nil {
		return nil, nil, err
	}
	first, err := d.Devices()
	if err == nil && len(first) == 0 {
		err = errors.New("gpu: NVML initialized but reports no devices")
	}
	if err != nil {
		if cerr := d.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, nil, err
	}
	return d, first, nil
}

func describe(devs []Device) []string {
	out := make([]string, len(devs))
	for i, d := range devs {
		out[i] = fmt.Sprintf("%d: %s (%d MiB)", d.Index, d.Name, d.MemoryTotal>>20)
	}
	return out
}

func describeSim(sim []SimGPU) []string {
	out := make([]string, len(sim))
	for i, g := range sim {
		out[i] = fmt.Sprintf("%d: %s (%d MiB)", i, g.Name, g.MemoryBytes>>20)
	}
	return out
}
