package agent

import (
	"fmt"
	"strings"
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

// check takes a reading and returns the reason the host is degraded now,
// or "" when it is healthy.
func (a *Agent) checkGPUs() string {
	devs, err := a.devs.Devices()
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

// updateHealth checks the GPUs and logs when the verdict changes; it
// reports whether it changed. Only the heartbeat loop calls it.
func (a *Agent) updateHealth() bool {
	a.healthMu.Lock()
	before := a.health.reason
	now := a.checkGPUs()
	a.healthMu.Unlock()
	if now == before {
		return false
	}
	if now != "" {
		a.log.Warn("host degraded: taking no new placements", "reason", now)
		a.degradedGauge.Set(1)
	} else {
		a.log.Info("host healthy again: taking placements", "was", before)
		a.degradedGauge.Set(0)
	}
	return true
}

// Degraded returns why the host takes no new placements now, or "".
func (a *Agent) Degraded() string {
	a.healthMu.Lock()
	defer a.healthMu.Unlock()
	return a.health.reason
}
