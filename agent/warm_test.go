package agent_test

import (
	"slices"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

// A job whose kind usually comes with a LoRA gets, with its placement, the
// advice to warm that LoRA, and the slot's worker loads it once the job is
// done: the next job that asks for both finds both in VRAM.
func TestSlotWarmsWhatJobsLikeItsLastOftenAskFor(t *testing.T) {
	const (
		ckpt     = "checkpoints/sd_xl_base_1.0.safetensors" // 96 MiB
		lora     = "loras/pixel_art_xl.safetensors"         // 12 MiB
		vae      = "vae/sdxl_vae.safetensors"               // 24 MiB
		upscaler = "upscale_models/4x_ultrasharp.pth"       // 16 MiB
	)
	origin := t.TempDir()
	ctx, api := startWithAgent(t, func(c *agent.Config) {
		// One 130 MiB slot: the checkpoint and the LoRA fit, and the
		// other two models push the LoRA out.
		c.SimGPUs = []gpu.SimGPU{{Name: "Simulated small GPU", MemoryBytes: 130 << 20}}
		c.SlotBytes, c.ReserveBytes = 130<<20, 0
		c.OriginDir = origin
	})
	if err := devcluster.SeedModels(ctx, api, origin, nil); err != nil {
		t.Fatal(err)
	}
	run := func(models ...string) *proto.Job {
		t.Helper()
		body := `{"worker":{"models":["` + models[0]
		for _, m := range models[1:] {
			body += `","` + m
		}
		body += `"]}}`
		j, err := api.SubmitRaw(ctx, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if j, err = api.WaitJob(ctx, j.ID, 20*time.Millisecond); err != nil || j.State != proto.JobSucceeded {
			t.Fatalf("job %v: %+v, %v", models, j, err)
		}
		return j
	}
	run(ckpt, lora)    // the checkpoint comes with the LoRA
	run(vae, upscaler) // these push the checkpoint out
	j := run(ckpt)     // and these the LoRA: the slot holds the upscaler and the checkpoint
	if len(j.Placement.Warm) != 1 || j.Placement.Warm[0].Name != lora {
		t.Fatalf("placement's warm advice %+v, want the LoRA", j.Placement.Warm)
	}
	models, err := api.Models(ctx)
	if err != nil {
		t.Fatal(err)
	}
	digestOf := func(name string) proto.Digest {
		for _, m := range models {
			if m.Name == name {
				return m.Digest
			}
		}
		t.Fatalf("model %s not in the catalog", name)
		return ""
	}
	want := digestOf(lora)
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err := api.Host(ctx, "h-test")
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Slots) == 1 && slices.Contains(h.Slots[0].Resident, want) && slices.Contains(h.Slots[0].Resident, digestOf(ckpt)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot holds %v 10 s after the job; want the checkpoint and the warmed LoRA", h.Slots)
		}
		time.Sleep(20 * time.Millisecond)
	}
	next := run(ckpt, lora)
	for _, m := range next.Placement.Models {
		if m.Tier != proto.TierVRAM {
			t.Fatalf("next job's %s came from %s; want both models warm", m.Name, m.Tier)
		}
	}
}
