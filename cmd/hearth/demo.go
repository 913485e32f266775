package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/internal/devcluster"
	"github.com/hearth-gpu/hearth/proto"
)

// runDemo is the main job on an embedded default: a one-node cluster in
// this process, a simulated GPU, a local origin with generated models, and
// every example workflow run twice: the repeat must find its models in vram.
func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	keep := fs.Bool("keep", false, "keep the temporary data dir and print its path")
	runnerName := fs.String("runner", agent.RunnerWorker, "what runs the workflows: worker (the reference worker) or comfyui (a stand-in ComfyUI server per slot, started and supervised by the agent)")
	verbose := fs.Bool("v", false, "log what the coordinator and agent do")
	s3 := addS3Flags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	s3cfg, err := s3.config()
	if err != nil {
		return err
	}
	if *runnerName != agent.RunnerWorker && *runnerName != agent.RunnerComfyUI {
		return usagef("--runner %q must be %s or %s", *runnerName, agent.RunnerWorker, agent.RunnerComfyUI)
	}
	began := time.Now()
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	dir, err := os.MkdirTemp("", "hearth-demo-")
	if err != nil {
		return err
	}
	if *keep {
		fmt.Fprintln(stdout, "data dir:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	origin := "local origin"
	if s3cfg != nil {
		origin = "origin " + s3.describe()
	}
	runs := "the reference worker"
	opts := devcluster.Options{
		DataDir: dir, Logger: logger,
		WorkerCommand: []string{exe, "refworker", "--step-delay=40ms"},
		S3:            s3cfg, Results: s3.results(s3cfg),
	}
	if *runnerName == agent.RunnerComfyUI {
		runs = "a stand-in ComfyUI server per slot"
		opts.Agent = func(c *agent.Config) {
			c.Runner = agent.RunnerComfyUI
			c.ComfyUI.Command = standinCommand(exe, "--step-delay=40ms")
		}
	}
	fmt.Fprintf(stdout, "starting a one-node coordinator and one agent (simulated GPU, %s, %s)...\n", origin, runs)
	c, err := devcluster.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer c.Close()

	type row struct {
		workflow, pass string
		job            *proto.Job
	}
	var rows []row
	for _, wf := range examples.Workflows() {
		for _, pass := range []string{"first", "repeat"} {
			j, err := c.Client.SubmitRaw(ctx, []byte(`{"workflow":`+string(wf.JSON)+`}`))
			if err != nil {
				return fmt.Errorf("submit %s: %w", wf.Name, err)
			}
			if j, err = c.Client.WaitJob(ctx, j.ID, 50*time.Millisecond); err != nil {
				return err
			}
			rows = append(rows, row{wf.Name, pass, j})
		}
	}

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKFLOW\tRUN\tSTATE\tHOST/GPU/SLOT\tMODEL TIERS AT PLACEMENT\tEST_S\tLOAD_S\tRUN_S\tOUTPUTS")
	var problems []string
	for _, r := range rows {
		j := r.job
		est := 0.0
		if j.Placement != nil {
			est = j.Placement.EstimateS
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%d\n", r.workflow, r.pass, j.State, placementString(j.Placement),
			tiersString(j.Placement), est, j.LoadS, j.RunS, len(j.Outputs))
		if j.State != proto.JobSucceeded {
			problems = append(problems, fmt.Sprintf("%s (%s) ended %s: %s", r.workflow, r.pass, j.State, j.Error))
		} else if len(j.Outputs) == 0 {
			problems = append(problems, fmt.Sprintf("%s (%s) succeeded without outputs", r.workflow, r.pass))
		}
		if r.pass == "repeat" && !allVRAM(j.Placement) {
			problems = append(problems, fmt.Sprintf("%s (repeat) was placed with models outside vram: %s", r.workflow, tiersString(j.Placement)))
		}
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n%d jobs in %.2fs wall time\n", len(rows), time.Since(began).Seconds())
	if len(problems) > 0 {
		return fmt.Errorf("demo failed:\n  %s", strings.Join(problems, "\n  "))
	}
	fmt.Fprintln(stdout, "every repeated workflow found its models resident in vram")
	return nil
}

// standinCommand starts this binary's stand-in ComfyUI server with the
// comfyui runner's placeholders, as a real ComfyUI would be started.
func standinCommand(exe string, extra ...string) []string {
	cmd := []string{exe, "comfyui-standin", "--listen", runner.PlaceholderHost, "--port", runner.PlaceholderPort,
		"--cuda-device", runner.PlaceholderGPU, "--extra-model-paths-config", runner.PlaceholderExtraModelPaths,
		"--output-directory", runner.PlaceholderOutputDir, "--disable-auto-launch"}
	return append(cmd, extra...)
}

func allVRAM(p *proto.Placement) bool {
	if p == nil {
		return false
	}
	for _, m := range p.Models {
		if m.Tier != proto.TierVRAM {
			return false
		}
	}
	return true
}
