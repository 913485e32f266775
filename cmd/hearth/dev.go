package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hearth-gpu/hearth/internal/devcluster"
)

func runDev(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dev", stderr)
	dataDir := fs.String("data-dir", "", "keep the cluster's state here (default: a temporary dir removed on exit)")
	httpAddr := fs.String("http-addr", "127.0.0.1:7700", "coordinator API address")
	raftAddr := fs.String("raft-addr", "127.0.0.1:7701", "coordinator Raft address")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("dev takes no arguments, got %q", fs.Args())
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	dir := *dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "hearth-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ctx, stop := signalContext()
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	c, err := devcluster.Start(startCtx, devcluster.Options{DataDir: dir, HTTPAddr: *httpAddr, RaftAddr: *raftAddr, Logger: logger})
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "hearth dev cluster is up\n  API:      %s\n  data dir: %s\n  try:      hearth job submit examples/workflows/sdxl_txt2img.json --wait\nCtrl-C stops it.\n",
		c.Coordinator.URL(), dir)
	<-ctx.Done()
	return c.Close()
}
