package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// runHostDrain runs "host drain ID [--wait] [--timeout D]" and
// "host drain --disable ID".
func runHostDrain(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("host drain", stderr)
	addr := fs.String("addr", defaultAddr(), "coordinator API URL (several, comma-separated, to fail over)")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token with the admin scope (default $HEARTH_TOKEN)")
	disable := fs.Bool("disable", false, "clear the drain: the host takes placements again")
	wait := fs.Bool("wait", false, "wait until no job is placed on or running on the host")
	timeout := fs.Duration("timeout", 10*time.Minute, "--wait: give up after this long (the drain stays)")
	var pos []string
	for rest := args; ; {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if rest = fs.Args(); len(rest) == 0 {
			break
		}
		pos, rest = append(pos, rest[0]), rest[1:]
	}
	switch {
	case len(pos) != 1:
		return usagef("host drain needs one host ID (see 'hearth host ls')")
	case *disable && *wait:
		return usagef("host drain --disable makes the host eligible at once; there is nothing to --wait for")
	case *timeout <= 0:
		return usagef("--timeout must be positive, like 10m")
	}
	id := pos[0]
	api := newClient(*addr, *token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := api.DrainHost(ctx, id, !*disable)
	if err != nil {
		return err
	}
	if *disable {
		fmt.Fprintf(stdout, "%s is eligible again: %s\n", id, h.Status)
		return nil
	}
	fmt.Fprintf(stdout, "%s is draining: %s\n", id, jobsLeft(h))
	if !*wait {
		return nil
	}
	deadline := time.Now().Add(*timeout)
	for h.ActiveJobs > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still has %s after %s; they go on and the host stays draining (clear it with 'hearth host drain --disable %s')", id, jobsLeft(h), *timeout, id)
		}
		time.Sleep(min(500*time.Millisecond, time.Until(deadline)+time.Millisecond))
		pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
		h, err = api.Host(pctx, id)
		pcancel()
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%s is drained: no job is placed on it (status %s)\n", id, h.Status)
	return nil
}

func jobsLeft(h *proto.HostView) string {
	if h.ActiveJobs == 1 {
		return "1 job left"
	}
	return fmt.Sprintf("%d jobs left", h.ActiveJobs)
}
