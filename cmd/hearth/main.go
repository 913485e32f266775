// Command hearth is the one binary of hearth: the host agent, the
// coordinator, an in-process dev cluster and demo, and the client commands.
// It only parses flags into configs; everything real lives in the packages.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/hearth-gpu/hearth/agent/runner/refworker"
	"github.com/hearth-gpu/hearth/internal/comfyuistandin"
)

const usage = `hearth runs GPU model jobs where their models are already warm.

Usage: hearth <command> [flags]

Daemons:
  coordinator   run a coordinator node (HTTP API, Raft, scheduler)
  agent         run the agent of a GPU host
Local cluster:
  dev           run a one-node cluster with a simulated GPU on the default ports
  demo          run the example workflows cold then warm on an embedded cluster
Client (talk to --addr, default $HEARTH_ADDR or http://127.0.0.1:7700):
  job submit FILE [--wait] [--idempotency-key K]   submit a workflow or job spec
  job get ID                 show a job
  job ls [--state S]         list jobs
  job cancel ID [--reason R] cancel a job (its run stops)
  job retry ID               requeue a failed, cancelled or timed-out job
  job watch ID               follow a job's events until it ends
  model ls                   list the model catalog and which hosts hold each model, in which tier
  model push FILE --name N   upload a model to the origin and register it in the catalog
  host ls                    list hosts and their slots
  host drain ID [--wait]     place nothing new on a host; --wait until its jobs are done
  host drain --disable ID    make a drained host eligible again
  operator raft peers        list the coordinators' Raft voters
  operator raft remove-peer ID   remove a coordinator from the Raft group
  bench submit               measure job acceptance on a loopback cluster
  bench heartbeat            measure the leader's cost of heartbeats from thousands of simulated agents
  sim                        simulate a fleet: hearth's placement against the policies users pick instead
Configuration:
  config validate FILE       check a config file: unknown keys, bad values, YAML syntax (file:line:column)
  config defaults            print every config key with its default and help
Other:
  version       print the version

Run 'hearth <command> -h' for a command's flags.
`

var version = "dev"

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "coordinator":
		err = runCoordinator(rest, stderr)
	case "agent":
		err = runAgent(rest, stderr)
	case "dev":
		err = runDev(rest, stdout, stderr)
	case "demo":
		err = runDemo(rest, stdout, stderr)
	case "job":
		err = runJob(rest, stdout, stderr)
	case "model":
		err = runModel(rest, stdout, stderr)
	case "host":
		err = runHost(rest, stdout, stderr)
	case "operator":
		err = runOperator(rest, stdout, stderr)
	case "config":
		err = runConfig(rest, stdout, stderr)
	case "bench":
		err = runBench(rest, stdout, stderr)
	case "sim":
		err = runSim(rest, stdout, stderr)
	case "refworker":
		// The reference worker the agent starts per slot (hidden: it speaks
		// the worker protocol on stdin/stdout, not to people).
		return refworker.Main(os.Stdin, stdout, stderr, rest)
	case "comfyui-standin":
		// The stand-in ComfyUI server (hidden: for the demo and for trying
		// the comfyui runner where ComfyUI itself cannot run).
		return comfyuistandin.Main(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "hearth", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usagef("unknown command %q; run 'hearth help' for the list", cmd)
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "hearth:", ue.msg)
		return 2
	default:
		fmt.Fprintln(stderr, "hearth:", err)
		return 1
	}
}

// newFlags returns a flag set whose parse errors become usage errors.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("hearth "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args. For the daemons (agent, coordinator) it adds
// --config first and then fills every flag not given on the command line
// from the config file and the HEARTH_<SECTION>_<FLAG> environment (see
// config.go).
func parseFlags(fs *flag.FlagSet, args []string) error {
	section := sectionOf(fs)
	if section != "" && fs.Lookup(configFlagName) == nil {
		fs.String(configFlagName, os.Getenv("HEARTH_CONFIG"), "YAML config file; its "+section+": section sets these flags (default $HEARTH_CONFIG; see 'hearth config defaults')")
	}
	capture, _ := fs.Output().(*flagCapture)
	if capture != nil && !capture.dryRun {
		capture.fs = fs
		return errCaptured
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if section != "" {
		return applyConfig(fs, section, capture != nil && capture.noEnv)
	}
	return nil
}

// newLogger returns a text logger at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, usagef("log level %q must be debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
