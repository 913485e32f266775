package fleetsim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Workload describes a generated trace. Zero fields take the defaults
// below; Generate checks the rest.
type Workload struct {
	Name     string
	Seed     uint64
	Duration float64 // seconds of arrivals
	Rate     float64 // mean arrivals per second over the whole duration

	// Bursty switches Poisson arrivals to a two-state modulated Poisson
	// process with the same mean rate: bursts at BurstFactor times Rate
	// (default 4) lasting BurstMeanS on average (default 20 s), and calm
	// phases at Rate/BurstFactor, BurstFactor times as long as a burst on
	// average, which makes the mean Rate.
	Bursty      bool
	BurstFactor float64
	BurstMeanS  float64

	// ZipfS is the popularity skew of checkpoints within a family (default
	// 1.0); LoRAs are Zipf within their family too, VAEs uniform.
	ZipfS float64

	// Catalog shape per family; nil maps take the defaults (500 models).
	Checkpoints map[Family]int     // default sd15 60, sdxl 60, flux 30
	LoRAs       map[Family]int     // default sd15 120, sdxl 130, flux 70
	VAEs        map[Family]int     // default 10 each
	FamilyMix   map[Family]float64 // share of jobs; default sd15 0.3, sdxl 0.5, flux 0.2

	// Drift: every DriftEveryS seconds (0: never) each popularity rank of
	// checkpoints and LoRAs swaps places with a random other rank of its
	// family with probability DriftSwap (default 0.2), so hot models cool
	// and cold ones heat up.
	DriftEveryS float64
	DriftSwap   float64

	// Launch: from LaunchAtS on (0: no launch) a new checkpoint of
	// LaunchFamily (default sdxl), in the catalog but unused before, takes
	// LaunchShare (default 0.3) of all jobs at once.
	LaunchAtS    float64
	LaunchShare  float64
	LaunchFamily Family
}

// The fleet's physical figures, from the issue that set up the simulator:
// model sizes on disk and run times alone on a whole H200.
const (
	gb = 1e9
	mb = 1e6

	loraMin, loraMax = 10 * mb, 800 * mb // log-uniform: most LoRAs are small
	vaeMin, vaeMax   = 160 * mb, 330 * mb
)

type familyFigures struct {
	ckptMin, ckptMax float64 // bytes, uniform
	runMin, runMax   float64 // seconds, uniform
	checkpoints      int     // default catalog shape and job share
	loras, vaes      int
	share            float64
}

var figures = map[Family]familyFigures{
	FamilySD15: {2 * gb, 4 * gb, 2, 4, 60, 120, 10, 0.3},
	// Every SDXL checkpoint is 6.9 GB; a few MB either way keeps them
	// distinct models.
	FamilySDXL: {6.9*gb - 4*mb, 6.9*gb + 4*mb, 6, 10, 60, 130, 10, 0.5},
	FamilyFlux: {12 * gb, 24 * gb, 20, 40, 30, 70, 10, 0.2},
}

// A job names its checkpoint and 0, 1 or 2 extras with these odds; an
// extra is a LoRA with probability pLoRA, else the job's one VAE.
var extrasOdds = [...]float64{0.4, 0.4, 0.2}

const (
	pLoRA = 0.8
	// maxRedraws bounds the draws for an extra that is not already in the
	// job; a job whose draws all repeat goes without that extra.
	maxRedraws = 8
)

// Defaults of the knobs that a zero value leaves open.
const (
	defaultBurstFactor  = 4
	defaultBurstMeanS   = 20
	defaultZipfS        = 1.0
	defaultDriftSwap    = 0.2
	defaultLaunchShare  = 0.3
	defaultLaunchFamily = FamilySDXL
	// shareSlack is how far FamilyMix may sum from 1.
	shareSlack = 1e-3
)

// Each part of a trace draws from its own PCG stream of the seed, so
// changing how jobs arrive leaves the catalog and the jobs' models alone.
const (
	streamCatalog uint64 = 0x6865617274680001 + iota
	streamArrivals
	streamJobs
	streamDrift
)

// StandardWorkloads is the benchmark trio: steady Zipf popularity,
// popularity that drifts ten times over the run, and bursty arrivals with a
// new model launched a third of the way in.
func StandardWorkloads(rate, duration float64, seed uint64) []Workload {
	return []Workload{
		{Name: "steady", Seed: seed, Rate: rate, Duration: duration, ZipfS: 1.0},
		{Name: "drift", Seed: seed, Rate: rate, Duration: duration, DriftEveryS: duration / 10, DriftSwap: 0.2},
		{Name: "launch", Seed: seed, Rate: rate, Duration: duration, Bursty: true, BurstFactor: 1.5, LaunchAtS: duration / 3, LaunchShare: 0.3},
	}
}

// MeanRunS is the expected run time of one job of a valid workload: the
// families' mean run times weighted by FamilyMix, and by the launched
// family's share for the part of the run after the launch. Rate times
// MeanRunS is the GPU-seconds a second of arrivals asks for.
func (w Workload) MeanRunS() float64 {
	w = w.withDefaults()
	mean := func(f Family) float64 { return (figures[f].runMin + figures[f].runMax) / 2 }
	var mixed float64
	for _, f := range families {
		mixed += w.FamilyMix[f] * mean(f)
	}
	if w.LaunchAtS <= 0 || w.Duration <= 0 {
		return mixed
	}
	after := max(0, 1-w.LaunchAtS/w.Duration)
	launched := w.LaunchShare*mean(w.LaunchFamily) + (1-w.LaunchShare)*mixed
	return (1-after)*mixed + after*launched
}

// withDefaults fills the zero knobs. It does not check anything.
func (w Workload) withDefaults() Workload {
	w.BurstFactor = orDefault(w.BurstFactor, defaultBurstFactor)
	w.BurstMeanS = orDefault(w.BurstMeanS, defaultBurstMeanS)
	w.ZipfS = orDefault(w.ZipfS, defaultZipfS)
	w.DriftSwap = orDefault(w.DriftSwap, defaultDriftSwap)
	w.LaunchShare = orDefault(w.LaunchShare, defaultLaunchShare)
	if w.LaunchFamily == "" {
		w.LaunchFamily = defaultLaunchFamily
	}
	fill := func(m map[Family]int, of func(familyFigures) int) map[Family]int {
		if m != nil {
			return m
		}
		m = make(map[Family]int)
		for _, f := range families {
			m[f] = of(figures[f])
		}
		return m
	}
	w.Checkpoints = fill(w.Checkpoints, func(x familyFigures) int { return x.checkpoints })
	w.LoRAs = fill(w.LoRAs, func(x familyFigures) int { return x.loras })
	w.VAEs = fill(w.VAEs, func(x familyFigures) int { return x.vaes })
	if w.FamilyMix == nil {
		w.FamilyMix = make(map[Family]float64)
		for _, f := range families {
			w.FamilyMix[f] = figures[f].share
		}
	}
	return w
}

func orDefault(v, def float64) float64 {
	if v == 0 {
		return def
	}
	return v
}

// validate checks a workload with its defaults filled.
func (w Workload) validate() error {
	for _, v := range []struct {
		name string
		v    float64
	}{
		{"Duration", w.Duration}, {"Rate", w.Rate}, {"BurstFactor", w.BurstFactor},
		{"BurstMeanS", w.BurstMeanS}, {"ZipfS", w.ZipfS}, {"DriftEveryS", w.DriftEveryS},
		{"DriftSwap", w.DriftSwap}, {"LaunchAtS", w.LaunchAtS}, {"LaunchShare", w.LaunchShare},
	} {
		if !(v.v >= 0) || math.IsInf(v.v, 0) {
			return fmt.Errorf("%s is %v: give a finite number of zero or more", v.name, v.v)
		}
	}
	switch {
	case w.Duration == 0 || w.Rate == 0:
		return fmt.Errorf("Duration %v s at Rate %v/s makes no jobs: give both", w.Duration, w.Rate)
	case w.Bursty && w.BurstFactor <= 1:
		return fmt.Errorf("BurstFactor is %v: a burst must be faster than the mean rate (above 1)", w.BurstFactor)
	case w.DriftSwap > 1:
		return fmt.Errorf("DriftSwap is %v: it is a fraction of the ranks, at most 1", w.DriftSwap)
	case w.LaunchShare > 1:
		return fmt.Errorf("LaunchShare is %v: it is a fraction of the jobs, at most 1", w.LaunchShare)
	case w.LaunchAtS >= w.Duration:
		return fmt.Errorf("LaunchAtS is %v s but arrivals stop at %v s: launch earlier or set 0 for no launch", w.LaunchAtS, w.Duration)
	case !w.LaunchFamily.known():
		return fmt.Errorf("LaunchFamily: %w", unknownFamily(w.LaunchFamily))
	}
	for _, c := range []struct {
		name string
		m    map[Family]int
	}{{"Checkpoints", w.Checkpoints}, {"LoRAs", w.LoRAs}, {"VAEs", w.VAEs}} {
		for f, n := range c.m {
			if !f.known() {
				return fmt.Errorf("%s: %w", c.name, unknownFamily(f))
			}
			if n < 0 {
				return fmt.Errorf("%s[%s] is %d: give zero or more", c.name, f, n)
			}
		}
	}
	var sum float64
	for f, s := range w.FamilyMix {
		if !f.known() {
			return fmt.Errorf("FamilyMix: %w", unknownFamily(f))
		}
		if !(s >= 0) || math.IsInf(s, 0) {
			return fmt.Errorf("FamilyMix[%s] is %v: give a share from 0 to 1", f, s)
		}
		if s > 0 && w.Checkpoints[f] == 0 {
			return fmt.Errorf("FamilyMix gives %s %v of the jobs but Checkpoints gives it none", f, s)
		}
		sum += s
	}
	if math.Abs(sum-1) > shareSlack {
		return fmt.Errorf("FamilyMix shares sum to %v: they must sum to 1", sum)
	}
	return nil
}

// Generate makes the catalog and jobs w describes. The same workload gives
// the same trace, bit for bit.
func Generate(w Workload) (*Trace, error) {
	w = w.withDefaults()
	if err := w.validate(); err != nil {
		return nil, fmt.Errorf("fleetsim: workload %q: %w", w.Name, err)
	}
	g := &generator{w: w, zipfs: make(map[int]*zipf)}
	g.catalog(rand.New(rand.NewPCG(w.Seed, streamCatalog)))
	g.jobs(arrivals(w, rand.New(rand.NewPCG(w.Seed, streamArrivals))),
		rand.New(rand.NewPCG(w.Seed, streamJobs)), rand.New(rand.NewPCG(w.Seed, streamDrift)))
	return &g.t, nil
}

// generator holds a trace being made and each family's popularity ranks.
type generator struct {
	w      Workload
	t      Trace
	fams   map[Family]*familyModels
	launch int // catalog index of the launched checkpoint; -1: none
	zipfs  map[int]*zipf
}

// familyModels are a family's catalog indices; ckpts and loras are in
// popularity order (rank 0 the most popular), which drift reshuffles.
type familyModels struct {
	ckpts, loras, vaes []int
}

func (g *generator) catalog(r *rand.Rand) {
	g.fams = make(map[Family]*familyModels)
	add := func(name string, size int64, k ModelKind, f Family) int {
		g.t.Catalog = append(g.t.Catalog, Model{Name: name, Digest: digestOfName(name), Size: size, Kind: k, Family: f})
		return len(g.t.Catalog) - 1
	}
	for _, f := range families {
		fm := &familyModels{}
		g.fams[f] = fm
		x := figures[f]
		for i := range g.w.Checkpoints[f] {
			fm.ckpts = append(fm.ckpts, add(fmt.Sprintf("checkpoints/%s-%03d.safetensors", f, i), uniformBytes(r, x.ckptMin, x.ckptMax), KindCheckpoint, f))
		}
		for i := range g.w.LoRAs[f] {
			size := int64(math.Exp(uniform(r, math.Log(loraMin), math.Log(loraMax))))
			fm.loras = append(fm.loras, add(fmt.Sprintf("loras/%s-%03d.safetensors", f, i), size, KindLoRA, f))
		}
		for i := range g.w.VAEs[f] {
			fm.vaes = append(fm.vaes, add(fmt.Sprintf("vae/%s-%03d.safetensors", f, i), uniformBytes(r, vaeMin, vaeMax), KindVAE, f))
		}
	}
	g.launch = -1
	if g.w.LaunchAtS > 0 {
		f := g.w.LaunchFamily
		x := figures[f]
		g.launch = add(fmt.Sprintf("checkpoints/%s-launch.safetensors", f), uniformBytes(r, x.ckptMin, x.ckptMax), KindCheckpoint, f)
	}
}

// jobs makes one job per arrival time, drifting popularity on schedule.
func (g *generator) jobs(at []float64, r, drift *rand.Rand) {
	g.t.Jobs = make([]Job, 0, len(at))
	nextDrift := math.Inf(1)
	if g.w.DriftEveryS > 0 {
		nextDrift = g.w.DriftEveryS
	}
	for i, t := range at {
		for t >= nextDrift {
			g.drift(drift)
			nextDrift += g.w.DriftEveryS
		}
		g.t.Jobs = append(g.t.Jobs, g.job(fmt.Sprintf("j%06d", i+1), t, r))
	}
}

func (g *generator) job(id string, at float64, r *rand.Rand) Job {
	var f Family
	var ckpt int
	if g.launch >= 0 && at >= g.w.LaunchAtS && r.Float64() < g.w.LaunchShare {
		f, ckpt = g.w.LaunchFamily, g.launch
	} else {
		f = g.family(r.Float64())
		ckpts := g.fams[f].ckpts
		ckpt = ckpts[g.zipf(len(ckpts)).rank(r)]
	}
	fm := g.fams[f]
	picked := []int{ckpt}
	has := func(m int) bool {
		for _, p := range picked {
			if p == m {
				return true
			}
		}
		return false
	}
	var extras int
	for u := r.Float64(); extras < len(extrasOdds)-1 && u >= extrasOdds[extras]; extras++ {
		u -= extrasOdds[extras]
	}
	vae := false
	for range extras {
		// A job decodes with one VAE; its other extras are LoRAs.
		lora := len(fm.loras) > 0 && (vae || len(fm.vaes) == 0 || r.Float64() < pLoRA)
		if !lora && (vae || len(fm.vaes) == 0) {
			break
		}
		for range maxRedraws {
			var m int
			if lora {
				m = fm.loras[g.zipf(len(fm.loras)).rank(r)]
			} else {
				m = fm.vaes[r.IntN(len(fm.vaes))]
			}
			if !has(m) {
				picked = append(picked, m)
				vae = vae || !lora
				break
			}
		}
	}
	names := make([]string, len(picked))
	for i, m := range picked {
		names[i] = g.t.Catalog[m].Name
	}
	x := figures[f]
	return Job{ID: id, At: at, Models: names, Family: f, RunS: uniform(r, x.runMin, x.runMax)}
}

// family picks a family by FamilyMix for u uniform in [0, 1).
func (g *generator) family(u float64) Family {
	var last Family
	for _, f := range families {
		s := g.w.FamilyMix[f]
		if s <= 0 {
			continue
		}
		if u < s {
			return f
		}
		u -= s
		last = f
	}
	return last // the shares summed to a hair under 1
}

// drift lets each checkpoint and LoRA rank swap with a random other rank of
// its family with probability DriftSwap.
func (g *generator) drift(r *rand.Rand) {
	swap := func(ranks []int) {
		n := len(ranks)
		if n < 2 {
			return
		}
		for i := range ranks {
			if r.Float64() < g.w.DriftSwap {
				j := r.IntN(n - 1)
				if j >= i {
					j++
				}
				ranks[i], ranks[j] = ranks[j], ranks[i]
			}
		}
	}
	for _, f := range families {
		swap(g.fams[f].ckpts)
		swap(g.fams[f].loras)
	}
}

func (g *generator) zipf(n int) *zipf {
	z, ok := g.zipfs[n]
	if !ok {
		z = newZipf(n, g.w.ZipfS)
		g.zipfs[n] = z
	}
	return z
}

// arrivals returns the arrival times of w's jobs in [0, Duration).
func arrivals(w Workload, r *rand.Rand) []float64 {
	at := make([]float64, 0, int(w.Rate*w.Duration*1.1)+16)
	if !w.Bursty {
		for t := r.ExpFloat64() / w.Rate; t < w.Duration; t += r.ExpFloat64() / w.Rate {
			at = append(at, t)
		}
		return at
	}
	// A burst takes a share 1/(F+1) of the time at F times the rate and a
	// calm phase the rest at 1/F of it: F/(F+1) + 1/(F+1) = 1, the mean.
	// The phase at time 0 is drawn with those odds, so the process is
	// stationary from the start; both phases end at exponential times, and
	// since arrivals are memoryless too, the draw pending at a phase's end
	// is dropped and redrawn at the new rate.
	f := w.BurstFactor
	burst := r.Float64() < 1/(f+1)
	t := 0.0
	for t < w.Duration {
		rate, meanLen := w.Rate/f, w.BurstMeanS*f
		if burst {
			rate, meanLen = w.Rate*f, w.BurstMeanS
		}
		end := min(t+r.ExpFloat64()*meanLen, w.Duration)
		for t += r.ExpFloat64() / rate; t < end; t += r.ExpFloat64() / rate {
			at = append(at, t)
		}
		t, burst = end, !burst
	}
	return at
}

// zipf samples ranks 0..n-1 with rank r weighted 1/(r+1)^s, by inverse CDF
// over the cumulative weights. Unlike math/rand's Zipf it takes any s ≥ 0,
// the skews near 1 that popularity measurements show included.
type zipf struct{ cum []float64 }

func newZipf(n int, s float64) *zipf {
	cum := make([]float64, n)
	var sum float64
	for i := range cum {
		sum += math.Pow(float64(i+1), -s)
		cum[i] = sum
	}
	return &zipf{cum}
}

func (z *zipf) rank(r *rand.Rand) int {
	u := r.Float64() * z.cum[len(z.cum)-1]
	i := sort.Search(len(z.cum), func(i int) bool { return z.cum[i] > u })
	return min(i, len(z.cum)-1) // u can round up to the total
}

func uniform(r *rand.Rand, lo, hi float64) float64 { return lo + r.Float64()*(hi-lo) }

func uniformBytes(r *rand.Rand, lo, hi float64) int64 { return int64(uniform(r, lo, hi)) }
