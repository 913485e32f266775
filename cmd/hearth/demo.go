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
	verbose := fs.Bool("v", false, "log what the coordinator and agent do")
	s3 := addS3Flags(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	s3cfg, err := s3.config()
	if err != nil {
		return err
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
	fmt.Fprintf(stdout, "starting a one-node coordinator and one agent (simulated GPU, %s)...\n", origin)
	c, err := devcluster.Start(ctx, devcluster.Options{
		DataDir: dir, Logger: logger,
		WorkerCommand: []string{exe, "refworker", "--step-delay=40ms"},
		S3:            s3cfg, Results: s3.results(s3cfg),
	})
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
	fmt.Fprintln(tw, "WORKFLOW\tRUN\tSTATE\tHOST/GPU/SLOT\tMODEL TIERS AT PLACEMENT\tEST_S\tLOAD_S\tRUN_S")
	var problems []string
	for _, r := range rows {
		j := r.job
		est := 0.0
		if j.Placement != nil {
			est = j.Placement.EstimateS
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.3f\n", r.workflow, r.pass, j.State, placementString(j.Placement),
			tiersString(j.Placement), est, j.LoadS, j.RunS)
		if j.State != proto.JobSucceeded {
			problems = append(problems, fmt.Sprintf("%s (%s) ended %s: %s", r.workflow, r.pass, j.State, j.Error))
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
