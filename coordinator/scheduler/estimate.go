package scheduler

import (
	"math"
	"time"
)

// estimator learns how long jobs run, per class (a job's largest model,
// which is what decides it: an SD1.5 checkpoint runs in seconds, a Flux
// one in tens), as a moving average of the run times reported; a class
// never seen takes the average over every class.
type estimator struct {
	all     float64
	byClass map[uint32]float64
}

// runAlpha is the weight of the newest observation.
const runAlpha = 0.2

func newEstimator(defaultRunS float64) estimator {
	return estimator{all: defaultRunS, byClass: make(map[uint32]float64)}
}

func (e *estimator) observe(class uint32, runS float64) {
	if runS <= 0 || math.IsNaN(runS) || math.IsInf(runS, 0) {
		return
	}
	e.all += runAlpha * (runS - e.all)
	if class == noClass {
		return
	}
	if v, ok := e.byClass[class]; ok {
		e.byClass[class] = v + runAlpha*(runS-v)
	} else {
		e.byClass[class] = runS
	}
}

func (e *estimator) runS(class uint32) float64 {
	if v, ok := e.byClass[class]; ok {
		return v
	}
	return e.all
}

// remaining is how long s needs, from now, to finish the jobs placed on
// it: the running job's rest (at least a tenth of its estimate, since one
// that overran its estimate is still running), the rest of a load under
// way, and the others' load and run.
func (f *Fleet) remaining(s *slot, now time.Time) float64 {
	var wait float64
	for _, j := range s.jobs {
		run := f.est.runS(j.class)
		switch {
		case !j.runningSince.IsZero():
			wait += max(run-now.Sub(j.runningSince).Seconds(), run/10)
		case j.job.StartedAt != nil:
			wait += max(j.loadS-now.Sub(*j.job.StartedAt).Seconds(), 0) + run
		default:
			wait += j.loadS + run
		}
	}
	return wait
}

// decaying is a count that halves every half-life.
type decaying struct {
	v  float64
	at time.Time
}

func (d *decaying) add(now time.Time, halfLife time.Duration) {
	d.v = d.value(now, halfLife) + 1
	d.at = now
}

func (d *decaying) value(now time.Time, halfLife time.Duration) float64 {
	if d.v == 0 {
		return 0
	}
	dt := now.Sub(d.at).Seconds()
	if dt <= 0 {
		return d.v
	}
	return d.v * math.Exp2(-dt/halfLife.Seconds())
}

// demandHalfLife is how fast a blob's demand count forgets a request.
const demandHalfLife = 60 * time.Second

// addDemand counts one request for b at now.
func (b *blob) addDemand(now time.Time) {
	b.demand = b.demandNow(now) + 1
	b.demandAt = now
}

// demandNow is b's decayed demand count at now.
func (b *blob) demandNow(now time.Time) float64 {
	if b.demand == 0 {
		return 0
	}
	dt := now.Sub(b.demandAt).Seconds()
	if dt <= 0 {
		return b.demand
	}
	return b.demand * math.Exp2(-dt/demandHalfLife.Seconds())
}
