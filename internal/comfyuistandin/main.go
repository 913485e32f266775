package comfyuistandin

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// TestChildEnv, set to "1", makes a test binary act as the stand-in
// server: tests re-execute their own binary with it, so the comfyui runner
// supervises a real process without the hearth binary being built first.
const TestChildEnv = "HEARTH_TEST_COMFYUI_STANDIN"

// ServeIfTestChild runs the stand-in and exits when TestChildEnv is set, and
// returns at once otherwise. Call it first thing in a TestMain.
func ServeIfTestChild() {
	if os.Getenv(TestChildEnv) == "1" {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// Main runs the stand-in as a process until SIGINT or SIGTERM and returns
// its exit code. It takes ComfyUI's own flags, so the runner's command line
// template works for both: --listen, --port, --extra-model-paths-config,
// --output-directory, --cuda-device; and, stand-in only, --step-delay and
// --steps. Other ComfyUI flags (--disable-auto-launch, ...) are accepted and
// ignored when they take no value.
func Main(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("comfyui-standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 8188, "port to listen on (0: any free port)")
	extra := fs.String("extra-model-paths-config", "", "extra_model_paths.yaml naming the model folders")
	out := fs.String("output-directory", "", "directory outputs are written to")
	cuda := fs.String("cuda-device", os.Getenv("CUDA_VISIBLE_DEVICES"), "device reported in /system_stats")
	stepDelay := fs.Duration("step-delay", 0, "pause before each sampler step")
	steps := fs.Int("steps", 4, "most sampler steps run per sampler node")
	for _, b := range []string{"disable-auto-launch", "dont-print-server", "disable-metadata", "highvram", "normalvram", "lowvram", "gpu-only"} {
		fs.Bool(b, false, "accepted for ComfyUI compatibility; ignored")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	s, err := Start(Config{
		Addr: net.JoinHostPort(*listen, strconv.Itoa(*port)), ExtraModelPaths: *extra, OutputDir: *out,
		StepDelay: *stepDelay, Steps: *steps, CUDADevice: *cuda, Logger: logger,
	})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// ComfyUI prints this line when it is ready; scripts wait for it.
	fmt.Fprintf(stdout, "To see the GUI go to: %s\n", s.URL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	done := make(chan struct{})
	go func() { _ = s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	return 0
}
