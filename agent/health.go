package agent

import (
	"fmt"
	"strings"

	"github.com/hearth-gpu/hearth/agent/gpu"
)

// gpuHealth decides, from one reading of the GPUs, whether the host should
// take new placements. A host that cannot read its GPUs (NVML failing), has
// lost one (fallen off the bus), or runs one hotter than GPUTempMaxC is
// degraded: the scheduler places nothing new there while jobs already
// running go on. A hot host clears only once every GPU is GPUTempHysteresisC
// below the limit, so it does not flap at the threshold.
type gpuHealth struct {
	hot    bool
	reason string
}

// checkGPUs judges one reading and returns the reason the host is
// degraded now, or "" when it is healthy. Callers hold healthMu.
func (a *Agent) checkGPUs(devs []gpu.Device, err error) string {
	h := &a.health
	h.reason = ""
	if err != nil {
		h.reason = fmt.Sprintf("cannot read the GPUs (%s): %v", a.devs.Kind(), err)
		return h.reason
	}
	seen := make(map[string]bool, len(devs))
	for _, d := range devs {
		seen[d.UUID] = true
	}
	var missing []string
	for _, g := range a.gpus {
		if !seen[g.UUID] {
			missing = append(missing, fmt.Sprintf("GPU %d (%s)", g.Index, g.UUID))
		}
	}
	if len(missing) > 0 {
		h.reason = strings.Join(missing, ", ") + " no longer reported: fallen off the bus or reset"
		return h.reason
	}
	var faults []string
	for _, d := range devs {
		if d.Fault != "" {
			faults = append(faults, fmt.Sprintf("GPU %d: %s", d.Index, d.Fault))
		}
	}
	if len(faults) > 0 {
		h.reason = strings.Join(faults, "; ")
		return h.reason
	}
	limit := a.cfg.GPUTempMaxC
	if limit < 0 {
		h.hot = false
		return ""
	}
	coolTo := limit - a.cfg.GPUTempHysteresisC
	var hottest, hottestIdx int
	for _, d := range devs {
		if d.TemperatureC > hottest {
			hottest, hottestIdx = d.TemperatureC, d.Index
		}
	}
	switch {
	case hottest > limit:
		h.hot = true
	case h.hot && hottest > coolTo:
		// still cooling down
	default:
		h.hot = false
	}
	if h.hot {
		h.reason = fmt.Sprintf("GPU %d at %d °C, over the %d °C limit: no new jobs until every GPU is at or below %d °C", hottestIdx, hottest, limit, coolTo)
	}
	return h.reason
}

// updateHealth reads the GPUs once, judges their health, takes slots out
// of service for memory that other processes hold, and logs when the
// verdict changes. Only the heartbeat loop calls it.
func (a *Agent) updateHealth() {
	devs, err := a.devs.Devices()
	if err == nil {
		a.accountVRAM(devs)
	}
	a.healthMu.Lock()
	before := a.health.reason
	now := a.checkGPUs(devs, err)
	a.healthMu.Unlock()
	if now == before {
		return
	}
	if now != "" {
		a.log.Warn("host degraded: taking no new placements", "reason", now)
		a.degradedGauge.Set(1)
	} else {
		a.log.Info("host healthy again: taking placements", "was", before)
		a.degradedGauge.Set(0)
	}
}

// Degraded returns why the host takes no new placements now, or "".
func (a *Agent) Degraded() string {
	a.healthMu.Lock()
	defer a.healthMu.Unlock()
	return a.health.reason
}
