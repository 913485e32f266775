package fleetsim

import (
	"crypto/sha256"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/hearth-gpu/hearth/proto"
)

func mustGenerate(t *testing.T, w Workload) *Trace {
	t.Helper()
	tr, err := Generate(w)
	if err != nil {
		t.Fatalf("Generate(%s): %v", w.Name, err)
	}
	return tr
}

func TestGenerateIsDeterministic(t *testing.T) {
	for _, w := range StandardWorkloads(2, 3000, 7) {
		t.Run(w.Name, func(t *testing.T) {
			a, b := mustGenerate(t, w), mustGenerate(t, w)
			if !reflect.DeepEqual(a, b) {
				t.Fatal("two traces of one seed differ")
			}
			w.Seed++
			c := mustGenerate(t, w)
			if reflect.DeepEqual(a.Jobs, c.Jobs) || reflect.DeepEqual(a.Catalog, c.Catalog) {
				t.Fatal("seeds 7 and 8 gave the same jobs or catalog")
			}
		})
	}
}

// TestArrivalRate runs short bursts (a 5 s cycle on average) so that the
// run spans 20,000 of them: the share of time in bursts then settles within
// a percent of its mean.
func TestArrivalRate(t *testing.T) {
	const rate, duration = 2.0, 100_000.0
	for _, bursty := range []bool{false, true} {
		for seed := range uint64(3) {
			tr := mustGenerate(t, Workload{Seed: seed, Rate: rate, Duration: duration, Bursty: bursty, BurstMeanS: 1})
			got := float64(len(tr.Jobs)) / duration
			if math.Abs(got/rate-1) > 0.03 {
				t.Errorf("bursty=%v seed %d: %.3f arrivals/s, want %v within 3%%", bursty, seed, got, rate)
			}
			for i, j := range tr.Jobs {
				if j.At < 0 || j.At >= duration || (i > 0 && j.At < tr.Jobs[i-1].At) {
					t.Fatalf("bursty=%v: job %d at %v s: out of order or outside [0, %v)", bursty, i, j.At, duration)
				}
			}
		}
	}
}

// dispersion is the variance over the mean of the jobs arriving in each
// second: 1 for a Poisson process, more for a bursty one.
func dispersion(tr *Trace, duration float64) float64 {
	counts := make([]float64, int(duration))
	for _, j := range tr.Jobs {
		counts[int(j.At)]++
	}
	var sum, sq float64
	for _, c := range counts {
		sum += c
		sq += c * c
	}
	mean := sum / float64(len(counts))
	return (sq/float64(len(counts)) - mean*mean) / mean
}

func TestBurstyArrivalsVaryMore(t *testing.T) {
	const duration = 20_000.0
	poisson := dispersion(mustGenerate(t, Workload{Seed: 3, Rate: 4, Duration: duration}), duration)
	bursty := dispersion(mustGenerate(t, Workload{Seed: 3, Rate: 4, Duration: duration, Bursty: true}), duration)
	if math.Abs(poisson-1) > 0.1 {
		t.Errorf("Poisson arrivals: dispersion %.2f, want 1 ± 0.1", poisson)
	}
	if bursty < 3 {
		t.Errorf("bursty arrivals: dispersion %.2f, want well above Poisson's %.2f", bursty, poisson)
	}
}

// harmonic is the sum of the Zipf weights of n ranks.
func harmonic(n int, s float64) float64 {
	var h float64
	for i := 1; i <= n; i++ {
		h += math.Pow(float64(i), -s)
	}
	return h
}

// useCounts counts the jobs of family f in [from, to) that use each model.
func useCounts(jobs []Job, f Family, from, to float64) (map[string]int, int) {
	uses, n := make(map[string]int), 0
	for _, j := range jobs {
		if j.Family == f && j.At >= from && j.At < to {
			n++
			for _, m := range j.Models {
				uses[m]++
			}
		}
	}
	return uses, n
}

// topCheckpoint is the checkpoint most jobs used, ties by name.
func topCheckpoint(uses map[string]int) string {
	top := ""
	for m, n := range uses {
		if strings.HasPrefix(m, "checkpoints/") && (top == "" || n > uses[top] || n == uses[top] && m < top) {
			top = m
		}
	}
	return top
}

func TestZipfTopCheckpointShare(t *testing.T) {
	for _, s := range []float64{0.8, 1.0, 1.3} {
		tr := mustGenerate(t, Workload{Seed: 11, Rate: 10, Duration: 5000, ZipfS: s})
		uses, n := useCounts(tr.Jobs, FamilySDXL, 0, math.Inf(1))
		top := topCheckpoint(uses)
		got, want := float64(uses[top])/float64(n), 1/harmonic(60, s)
		if top != "checkpoints/sdxl-000.safetensors" || math.Abs(got/want-1) > 0.08 {
			t.Errorf("ZipfS %v: top SDXL checkpoint %s has %.3f of SDXL jobs, want sdxl-000 with %.3f", s, top, got, want)
		}
	}
}

func TestDriftChangesTheTopModel(t *testing.T) {
	const duration = 10_000.0
	for _, w := range StandardWorkloads(5, duration, 5)[:2] {
		tr := mustGenerate(t, w)
		first, _ := useCounts(tr.Jobs, FamilySDXL, 0, duration/10)
		last, _ := useCounts(tr.Jobs, FamilySDXL, duration*9/10, duration)
		a, b := topCheckpoint(first), topCheckpoint(last)
		if drifts := w.DriftEveryS > 0; drifts == (a == b) {
			t.Errorf("%s: top SDXL checkpoint %s in the first tenth, %s in the last; want them to differ only with drift", w.Name, a, b)
		}
	}
}

func TestLaunchedModel(t *testing.T) {
	w := StandardWorkloads(5, 9000, 9)[2]
	tr := mustGenerate(t, w)
	launched := tr.Catalog[len(tr.Catalog)-1]
	if launched.Kind != KindCheckpoint || launched.Family != FamilySDXL || len(tr.Catalog) != 501 {
		t.Fatalf("last of %d catalog entries is %+v, want the launched SDXL checkpoint after 500 others", len(tr.Catalog), launched)
	}
	var after, using int
	for _, j := range tr.Jobs {
		uses := j.Models[0] == launched.Name
		if j.At < w.LaunchAtS && uses {
			t.Fatalf("job %s at %v s uses the model launched at %v s", j.ID, j.At, w.LaunchAtS)
		}
		if j.At >= w.LaunchAtS {
			after++
			if uses {
				using++
			}
		}
	}
	if got := float64(using) / float64(after); math.Abs(got-w.LaunchShare) > 0.02 {
		t.Errorf("launched model runs %.3f of the %d jobs after the launch, want %v", got, after, w.LaunchShare)
	}
}

func TestCatalogFigures(t *testing.T) {
	tr := mustGenerate(t, Workload{Seed: 1, Rate: 1, Duration: 10})
	type key struct {
		f Family
		k ModelKind
	}
	counts := make(map[key]int)
	names := make(map[string]bool)
	// SDXL checkpoints are all 6.9 GB, a few MB apart.
	ckptRange := map[Family][2]int64{FamilySD15: {2e9, 4e9}, FamilySDXL: {6.89e9, 6.91e9}, FamilyFlux: {12e9, 24e9}}
	smallLoRAs := 0
	for _, m := range tr.Catalog {
		counts[key{m.Family, m.Kind}]++
		if names[m.Name] {
			t.Errorf("model %s listed twice", m.Name)
		}
		names[m.Name] = true
		sum := sha256.Sum256([]byte(m.Name))
		if m.Digest != proto.DigestFromSum(sum[:]) {
			t.Errorf("model %s: digest %s, want sha256 of its name", m.Name, m.Digest)
		}
		r := ckptRange[m.Family]
		switch m.Kind {
		case KindLoRA:
			r = [2]int64{10e6, 800e6}
		case KindVAE:
			r = [2]int64{160e6, 330e6}
		}
		if m.Size < r[0] || m.Size > r[1] {
			t.Errorf("%s: %d bytes, want %d–%d", m.Name, m.Size, r[0], r[1])
		}
		if m.Kind == KindLoRA && m.Size < 100e6 {
			smallLoRAs++
		}
	}
	want := map[key]int{
		{FamilySD15, KindCheckpoint}: 60, {FamilySDXL, KindCheckpoint}: 60, {FamilyFlux, KindCheckpoint}: 30,
		{FamilySD15, KindLoRA}: 120, {FamilySDXL, KindLoRA}: 130, {FamilyFlux, KindLoRA}: 70,
		{FamilySD15, KindVAE}: 10, {FamilySDXL, KindVAE}: 10, {FamilyFlux, KindVAE}: 10,
	}
	if !reflect.DeepEqual(counts, want) || len(tr.Catalog) != 500 {
		t.Errorf("catalog of %d models by family and kind = %v, want %v", len(tr.Catalog), counts, want)
	}
	// Log-uniform over 10–800 MB puts log(10)/log(80) ≈ 53% under 100 MB;
	// uniform would put 11% there.
	if f := float64(smallLoRAs) / 320; f < 0.4 || f > 0.65 {
		t.Errorf("%.2f of LoRAs are under 100 MB, want about half (skewed small)", f)
	}
}

func TestJobFigures(t *testing.T) {
	tr := mustGenerate(t, Workload{Seed: 2, Rate: 10, Duration: 3000, DriftEveryS: 300, LaunchAtS: 1000})
	catalog := make(map[string]Model)
	for _, m := range tr.Catalog {
		catalog[m.Name] = m
	}
	runRange := map[Family][2]float64{FamilySD15: {2, 4}, FamilySDXL: {6, 10}, FamilyFlux: {20, 40}}
	var sizes [4]int
	ids := make(map[string]bool)
	for _, j := range tr.Jobs {
		if ids[j.ID] || len(j.ID) != 7 || j.ID[0] != 'j' {
			t.Fatalf("job id %q repeated or not like j000001", j.ID)
		}
		ids[j.ID] = true
		if r := runRange[j.Family]; j.RunS < r[0] || j.RunS > r[1] {
			t.Errorf("%s job %s runs %v s, want %v–%v", j.Family, j.ID, j.RunS, r[0], r[1])
		}
		if len(j.Models) < 1 || len(j.Models) > 3 || j.Priority != 0 || j.VRAMBytes != 0 {
			t.Fatalf("job %+v: want 1–3 models, priority 0, no VRAM override", j)
		}
		sizes[len(j.Models)]++
		seen, vaes := make(map[string]bool), 0
		for i, name := range j.Models {
			m, ok := catalog[name]
			switch {
			case !ok || seen[name]:
				t.Fatalf("job %s: model %s unknown or named twice", j.ID, name)
			case m.Family != j.Family:
				t.Fatalf("job %s of family %s uses %s", j.ID, j.Family, name)
			case (i == 0) != (m.Kind == KindCheckpoint):
				t.Fatalf("job %s: models %v: want the checkpoint first and only there", j.ID, j.Models)
			}
			seen[name] = true
			if m.Kind == KindVAE {
				vaes++
			}
		}
		if vaes > 1 {
			t.Fatalf("job %s: models %v: more than one VAE", j.ID, j.Models)
		}
	}
	// A repeated draw drops an extra now and then, so 1 gains a little.
	for n, want := range map[int]float64{1: 0.4, 2: 0.4, 3: 0.2} {
		if got := float64(sizes[n]) / float64(len(tr.Jobs)); math.Abs(got-want) > 0.02 {
			t.Errorf("%.3f of jobs name %d models, want %v", got, n, want)
		}
	}
}

func TestMeanRunS(t *testing.T) {
	for _, w := range StandardWorkloads(10, 6000, 4) {
		tr := mustGenerate(t, w)
		var sum float64
		for _, j := range tr.Jobs {
			sum += j.RunS
		}
		got, want := sum/float64(len(tr.Jobs)), w.MeanRunS()
		if math.Abs(got/want-1) > 0.03 {
			t.Errorf("%s: jobs run %.2f s on average, MeanRunS says %.2f", w.Name, got, want)
		}
	}
	if got := (Workload{}).MeanRunS(); math.Abs(got-10.9) > 1e-9 {
		t.Errorf("default MeanRunS = %v, want 0.3×3 + 0.5×8 + 0.2×30 = 10.9", got)
	}
}

func TestWorkloadValidation(t *testing.T) {
	ok := Workload{Name: "w", Rate: 1, Duration: 100}
	for _, tc := range []struct {
		name string
		edit func(*Workload)
		want string
	}{
		{"negative rate", func(w *Workload) { w.Rate = -1 }, "Rate is -1"},
		{"NaN duration", func(w *Workload) { w.Duration = math.NaN() }, "Duration is NaN"},
		{"infinite zipf", func(w *Workload) { w.ZipfS = math.Inf(1) }, "ZipfS is +Inf"},
		{"no rate", func(w *Workload) { w.Rate = 0 }, "makes no jobs"},
		{"calm bursts", func(w *Workload) { w.Bursty, w.BurstFactor = true, 0.5 }, "BurstFactor"},
		{"swap over 1", func(w *Workload) { w.DriftSwap = 1.5 }, "DriftSwap"},
		{"launch after end", func(w *Workload) { w.LaunchAtS = 100 }, "LaunchAtS"},
		{"launch share over 1", func(w *Workload) { w.LaunchShare = 2 }, "LaunchShare"},
		{"unknown launch family", func(w *Workload) { w.LaunchFamily = "sd3" }, `unknown family "sd3"`},
		{"unknown catalog family", func(w *Workload) { w.LoRAs = map[Family]int{"pony": 3} }, `LoRAs: unknown family "pony"`},
		{"negative count", func(w *Workload) { w.VAEs = map[Family]int{FamilyFlux: -1} }, "VAEs[flux] is -1"},
		{"unknown mix family", func(w *Workload) { w.FamilyMix = map[Family]float64{"sd3": 1} }, `FamilyMix: unknown family "sd3"`},
		{"shares under 1", func(w *Workload) { w.FamilyMix = map[Family]float64{FamilySD15: 0.5, FamilySDXL: 0.4} }, "sum to 0.9"},
		{"negative share", func(w *Workload) { w.FamilyMix = map[Family]float64{FamilySD15: -0.5, FamilySDXL: 1.5} }, "FamilyMix[sd15] is -0.5"},
		{"family without checkpoints", func(w *Workload) { w.Checkpoints = map[Family]int{FamilySD15: 5, FamilySDXL: 5} }, "gives flux 0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := ok
			tc.edit(&w)
			_, err := Generate(w)
			if err == nil || !strings.HasPrefix(err.Error(), `fleetsim: workload "w": `) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Generate: %v, want an error about %q", err, tc.want)
			}
		})
	}
	// A smaller catalog of two families is fine.
	w := ok
	w.Checkpoints = map[Family]int{FamilySD15: 2, FamilyFlux: 1}
	w.LoRAs, w.VAEs = map[Family]int{}, map[Family]int{FamilyFlux: 1}
	w.FamilyMix = map[Family]float64{FamilySD15: 0.5, FamilyFlux: 0.5}
	tr := mustGenerate(t, w)
	if len(tr.Catalog) != 4 || len(tr.Jobs) == 0 {
		t.Fatalf("small catalog: %d models, %d jobs; want 4 models and some jobs", len(tr.Catalog), len(tr.Jobs))
	}
}
