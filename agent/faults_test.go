package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/internal/comfyuistandin"
	"github.com/hearth-gpu/hearth/proto"
)

// comfyAgent makes the agent run one stand-in ComfyUI server per slot, as
// processes it starts and supervises (the test binary re-executed).
func comfyAgent(c *agent.Config) {
	c.Runner = agent.RunnerComfyUI
	c.ComfyUI.Command = []string{os.Args[0], "--listen", runner.PlaceholderHost, "--port", runner.PlaceholderPort,
		"--extra-model-paths-config", runner.PlaceholderExtraModelPaths, "--output-directory", runner.PlaceholderOutputDir}
	c.ComfyUI.Env = []string{comfyuistandin.TestChildEnv + "=1", "GORACE=atexit_sleep_ms=0"}
}

// A ComfyUI server that dies in the middle of a job does not fail the job:
// the agent reports the attempt lost through no fault of the job, the
// coordinator requeues it, and the next attempt runs on the restarted
// server and succeeds with its outputs.
func TestComfyUICrashMidJobRequeuesTheJob(t *testing.T) {
	ctx, api := startWithAgent(t, comfyAgent)
	marker := filepath.Join(t.TempDir(), "crashed-once")
	wf := map[string]any{
		"1": map[string]any{"class_type": "StandinCrash", "inputs": map[string]any{"once": marker}},
		"2": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"filename_prefix": "after-crash"}},
	}
	body, _ := json.Marshal(map[string]any{"workflow": wf})
	j, err := api.SubmitRaw(ctx, body)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var states []string
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go api.WatchJob(watchCtx, j.ID, 0, func(e client.Event) error {
		var ev proto.JobEvent
		if json.Unmarshal(e.Data, &ev) == nil && ev.Type == proto.EventState {
			mu.Lock()
			states = append(states, string(ev.State)+": "+ev.Error)
			mu.Unlock()
		}
		return nil
	})
	j, err = api.WaitJob(ctx, j.ID, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != proto.JobSucceeded || j.Attempts != 2 || len(j.Outputs) == 0 {
		t.Fatalf("job %s after %d attempts, %d outputs, error %q; want succeeded on the second attempt with outputs", j.State, j.Attempts, len(j.Outputs), j.Error)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the first attempt never reached the crashing node: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.ContainsFunc(states, func(s string) bool {
		return strings.HasPrefix(s, "queued: attempt 1 lost") && strings.Contains(s, "ComfyUI")
	}) {
		t.Errorf("no requeue event naming the lost attempt; state events: %q", states)
	}
}

// A job that needs more VRAM than any registered host's slots is refused
// at submit with 422 naming the field, and so is a kind no host runs.
func TestSubmitRefusesJobsNoHostCanRun(t *testing.T) {
	ctx, api := startWithAgent(t, comfyAgent) // 24 GiB slots; workflow and exec only
	_, code, err := api.Submit(ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}, VRAMBytes: 80 << 30}, client.SubmitOptions{})
	var ae *client.Error
	if !errors.As(err, &ae) || code != 422 || ae.Code != "insufficient_vram" || ae.Field != "vram_bytes" || !strings.Contains(ae.Message, "24.0 GiB") {
		t.Fatalf("80 GiB job: code %d, err %v; want 422 insufficient_vram on vram_bytes", code, err)
	}
	_, code, err = api.Submit(ctx, &proto.JobSpec{Worker: &proto.WorkerPayload{}}, client.SubmitOptions{})
	if !errors.As(err, &ae) || code != 422 || ae.Code != "no_runner" {
		t.Fatalf("worker job on ComfyUI hosts: code %d, err %v; want 422 no_runner", code, err)
	}
	j, code, err := api.Submit(ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}, VRAMBytes: 20 << 30}, client.SubmitOptions{})
	if err != nil || code != 202 {
		t.Fatalf("20 GiB job: code %d, err %v; want 202", code, err)
	}
	if j, err = api.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil || j.State != proto.JobSucceeded {
		t.Fatalf("20 GiB job ended %v, %v", j, err)
	}
}

// fakeGPUs is a test double for NVML: a GPU whose temperature and health
// the test sets.
type fakeGPUs struct {
	mu    sync.Mutex
	tempC int
	err   error
	gone  bool
	procs []gpu.Process
}

func (f *fakeGPUs) Kind() string { return gpu.KindNVML }

func (f *fakeGPUs) Devices() ([]gpu.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if f.gone {
		return nil, nil
	}
	return []gpu.Device{{Index: 0, UUID: "GPU-fake-0", Name: "Fake H200", MemoryTotal: 141 << 30, MemoryFree: 141 << 30, TemperatureC: f.tempC, Processes: f.procs}}, nil
}

func (f *fakeGPUs) Close() error { return nil }

func (f *fakeGPUs) set(fn func(*fakeGPUs)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// A host whose GPU runs too hot, whose NVML fails, or whose GPU falls off
// the bus reports itself degraded: it takes no new placements (a job waits
// queued) until the fault clears, and a hot GPU must cool below the limit
// by the hysteresis first.
func TestDegradedHostTakesNoPlacements(t *testing.T) {
	devs := &fakeGPUs{tempC: 60}
	ctx, api := startWithAgent(t, func(c *agent.Config) { c.Devices, c.GPUTempMaxC, c.GPUTempHysteresisC = devs, 85, 5 })
	status := func() proto.HostView {
		hs, err := api.Hosts(ctx)
		if err != nil || len(hs) != 1 {
			t.Fatalf("hosts: %v %v", hs, err)
		}
		return hs[0]
	}
	waitStatus := func(want proto.HostStatus) proto.HostView {
		t.Helper()
		for {
			if h := status(); h.Status == want {
				return h
			}
			if ctx.Err() != nil {
				t.Fatalf("host never became %s; it is %s", want, status().Status)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStatus(proto.HostReady)
	for _, fault := range []struct {
		name   string
		set    func(*fakeGPUs)
		reason string
	}{
		{"hot", func(f *fakeGPUs) { f.tempC = 90 }, "90 °C"},
		{"nvml error", func(f *fakeGPUs) { f.err = errors.New("ERROR_UNKNOWN") }, "ERROR_UNKNOWN"},
		{"off the bus", func(f *fakeGPUs) { f.gone = true }, "GPU-fake-0"},
	} {
		devs.set(fault.set)
		h := waitStatus(proto.HostDegraded)
		if !strings.Contains(h.DegradedReason, fault.reason) {
			t.Errorf("%s: degraded reason %q lacks %q", fault.name, h.DegradedReason, fault.reason)
		}
		j, _, err := api.Submit(ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}}, client.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Several heartbeats and scheduler passes go by: nothing is placed.
		for i := 0; i < 5; i++ {
			if h := status(); h.Status != proto.HostDegraded {
				t.Fatalf("%s: host became %s while the fault lasted", fault.name, h.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got, _ := api.Job(ctx, j.ID); got.State != proto.JobQueued {
			t.Fatalf("%s: job %s on a degraded host, want queued", fault.name, got.State)
		}
		if fault.name == "hot" {
			devs.set(func(f *fakeGPUs) { f.tempC = 83 }) // below the limit, not yet by the hysteresis
			for i := 0; i < 5; i++ {
				if h := status(); h.Status != proto.HostDegraded {
					t.Fatalf("host cleared at 83 °C, within the 5 °C hysteresis of 85 °C")
				}
				time.Sleep(100 * time.Millisecond)
			}
			devs.set(func(f *fakeGPUs) { f.tempC = 79 })
		}
		devs.set(func(f *fakeGPUs) { f.err, f.gone = nil, false })
		waitStatus(proto.HostReady)
		if got, err := api.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil || got.State != proto.JobSucceeded {
			t.Fatalf("%s: job after the fault cleared: %v %v", fault.name, got, err)
		}
	}
}

// Memory that GPU processes outside the agent hold takes whole slots out of
// service, highest first, once it exceeds the reserve and the bytes no slot
// covers; the agent's own processes do not count. The slots come back when
// the memory is released.
func TestForeignGPUMemoryBlocksSlots(t *testing.T) {
	devs := &fakeGPUs{tempC: 40}
	ctx, api := startWithAgent(t, func(c *agent.Config) {
		c.Devices, c.MaxSlotsPerGPU = devs, 0 // 141 GiB - 2 GiB reserve: 5 slots of 24 GiB, 21 GiB uncovered
	})
	blockedSlots := func() ([]int, proto.GPUState, bool) {
		hs, err := api.Hosts(ctx)
		if err != nil || len(hs) != 1 {
			t.Fatalf("hosts: %+v %v", hs, err)
		}
		if len(hs[0].GPUStates) != 1 {
			return nil, proto.GPUState{}, false // no heartbeat yet
		}
		var out []int
		for _, s := range hs[0].Slots {
			if s.Blocked != "" {
				out = append(out, s.Slot)
			}
		}
		return out, hs[0].GPUStates[0], true
	}
	waitBlocked := func(want []int, foreign uint64) proto.GPUState {
		t.Helper()
		for {
			got, st, ok := blockedSlots()
			if ok && slices.Equal(got, want) && st.ForeignBytes == foreign {
				return st
			}
			if ctx.Err() != nil {
				t.Fatalf("blocked slots %v, foreign %d; want %v, %d", got, st.ForeignBytes, want, foreign)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitBlocked(nil, 0)
	self := os.Getpid()
	const gib = 1 << 30
	// 30 GiB foreign (a pid that is no descendant of the agent) and 50 GiB
	// of the agent's own: 9 GiB past what is uncovered, so one slot.
	devs.set(func(f *fakeGPUs) {
		f.procs = []gpu.Process{{PID: 1 << 30, UsedBytes: 30 * gib}, {PID: self, UsedBytes: 50 * gib}}
	})
	st := waitBlocked([]int{4}, 30*gib)
	if st.FreeSlots != 4 || st.LargestFreeRun != 4 {
		t.Errorf("pool after one blocked slot: %+v", st)
	}
	devs.set(func(f *fakeGPUs) { f.procs = []gpu.Process{{PID: 1 << 30, UsedBytes: 70 * gib}} })
	waitBlocked([]int{2, 3, 4}, 70*gib)
	// Jobs still run, on the slots left.
	j, _, err := api.Submit(ctx, &proto.JobSpec{Exec: &proto.ExecPayload{Command: []string{"true"}}}, client.SubmitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if j, err = api.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil || j.State != proto.JobSucceeded || j.Placement.Slot > 1 {
		t.Fatalf("job with three slots blocked: %+v %v", j, err)
	}
	devs.set(func(f *fakeGPUs) { f.procs = nil })
	waitBlocked(nil, 0)
}
