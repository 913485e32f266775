package coordinator

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/proto"
)

// BenchmarkAccept measures POST /v1/jobs on a single-node cluster: latency
// of one client submitting serially (p50, p99) and throughput with 32
// concurrent clients. Baselines in the same run: a 1 KiB write+fsync in the
// same data dir (a single-node commit is at least one fsync) and a
// GET /healthz round trip (the HTTP stack without Raft).
//
//	go test -run '^$' -bench Accept -benchtime 1x ./coordinator/
func BenchmarkAccept(b *testing.B) {
	const serial, concurrent, clients = 500, 4000, 32
	for range b.N {
		s, api := newTestServer(b, nil)
		putTestModel(b, api, "checkpoints/sd_xl_base_1.0.safetensors", 6_900_000_000)
		putTestModel(b, api, "vae/sdxl_vae.safetensors", 334_000_000)
		body := []byte(`{"workflow":` + string(examples.Workflows()[1].JSON) + `}`)
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
		post := func() time.Duration {
			t0 := time.Now()
			resp, err := hc.Post(s.URL()+"/v1/jobs", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				b.Fatalf("submit: %d", resp.StatusCode)
			}
			return time.Since(t0)
		}

		lat := make([]time.Duration, serial)
		for i := range lat {
			lat[i] = post()
		}
		start := time.Now()
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for range concurrent / clients {
					post()
				}
			})
		}
		wg.Wait()
		jobsPerSec := concurrent / time.Since(start).Seconds()

		fsync := fsyncLatencies(b, s.cfg.DataDir, serial)
		health := make([]time.Duration, serial)
		for i := range health {
			t0 := time.Now()
			resp, err := hc.Get(s.URL() + "/healthz")
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			health[i] = time.Since(t0)
		}
		b.ReportMetric(ms(pct(lat, 50)), "accept_p50_ms")
		b.ReportMetric(ms(pct(lat, 99)), "accept_p99_ms")
		b.ReportMetric(jobsPerSec, "jobs/s")
		b.ReportMetric(ms(pct(fsync, 50)), "baseline_fsync_p50_ms")
		b.ReportMetric(ms(pct(fsync, 99)), "baseline_fsync_p99_ms")
		b.ReportMetric(ms(pct(health, 50)), "baseline_healthz_p50_ms")
		b.ReportMetric(1/pct(fsync, 50).Seconds(), "baseline_serial_fsyncs/s")
	}
}

func fsyncLatencies(b *testing.B, dir string, n int) []time.Duration {
	f, err := os.Create(filepath.Join(dir, "fsync-baseline"))
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1024)
	out := make([]time.Duration, n)
	for i := range out {
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		out[i] = time.Since(t0)
	}
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkSnapshot100k builds an FSM of 100,000 finished jobs (each with
// the example SDXL workflow, two models, a placement and an output), writes
// a snapshot to a file and restores it. Baseline in the same run: reading
// the snapshot file end to end, the floor for any restore.
//
//	go test -run '^$' -bench Snapshot100k -benchtime 1x ./coordinator/
func BenchmarkSnapshot100k(b *testing.B) {
	const jobs = 100_000
	for range b.N {
		f := NewFSM()
		wf := examples.Workflows()[1].JSON
		now := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
		for i := range jobs {
			id := fmt.Sprintf("%012x%012x", now.UnixMilli()+int64(i), i)
			j := &proto.Job{ID: id, Spec: proto.JobSpec{Workflow: wf}, State: proto.JobSucceeded, Attempts: 1, SubmittedAt: now,
				Models: []proto.ModelRef{
					{Name: "checkpoints/sd_xl_base_1.0.safetensors", Digest: testDigest("ckpt"), Size: 6_900_000_000, Node: "4", Input: "ckpt_name"},
					{Name: "vae/sdxl_vae.safetensors", Digest: testDigest("vae"), Size: 334_000_000, Node: "10", Input: "vae_name"}},
				Placement: &proto.Placement{Host: "gpu-host-17", Slot: 3, Epoch: uint64(i), EstimateS: 0.13, PlacedAt: now,
					Models: []proto.ModelPlacement{{Name: "checkpoints/sd_xl_base_1.0.safetensors", Tier: proto.TierVRAM}, {Name: "vae/sdxl_vae.safetensors", Tier: proto.TierRAM, Seconds: 0.07}}},
				Outputs: []proto.Output{{Name: "hearth_00001_.png", Size: 1_500_000, Digest: testDigest(id), URL: "s3://results/" + id + "/hearth_00001_.png"}},
				LoadS:   0.07, RunS: 4.2, StartedAt: &now, FinishedAt: &now}
			f.jobs[id] = j
		}
		path := filepath.Join(b.TempDir(), "snap")
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		snap, _ := f.Snapshot()
		if err := snap.(*fsmSnapshot).write(out); err != nil {
			b.Fatal(err)
		}
		if err := out.Sync(); err != nil {
			b.Fatal(err)
		}
		persist := time.Since(t0)
		out.Close()
		st, _ := os.Stat(path)

		t0 = time.Now()
		in, _ := os.Open(path)
		io.Copy(io.Discard, in)
		in.Close()
		readOnly := time.Since(t0)

		f = nil
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		restored := NewFSM()
		in, _ = os.Open(path)
		t0 = time.Now()
		if err := restored.Restore(in); err != nil {
			b.Fatal(err)
		}
		restore := time.Since(t0)
		runtime.GC()
		runtime.ReadMemStats(&after)
		if n := len(restored.Jobs(JobFilter{})); n != jobs {
			b.Fatalf("restored %d jobs, want %d", n, jobs)
		}
		b.ReportMetric(float64(st.Size())/(1<<20), "snapshot_MiB")
		b.ReportMetric(persist.Seconds(), "persist_s")
		b.ReportMetric(restore.Seconds(), "restore_s")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "restored_heap_MiB")
		b.ReportMetric(readOnly.Seconds(), "baseline_read_file_s")
	}
}
