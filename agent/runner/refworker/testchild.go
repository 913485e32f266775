package refworker

import "os"

// TestChildEnv, set to "1", makes a test binary act as the reference
// worker. Tests that need a worker process re-execute their own binary with
// it instead of building the hearth binary first.
const TestChildEnv = "HEARTH_TEST_REFWORKER"

// ServeIfTestChild runs the worker and exits when TestChildEnv is set, and
// returns at once otherwise. Call it first thing in a TestMain.
func ServeIfTestChild() {
	if os.Getenv(TestChildEnv) == "1" {
		os.Exit(Main(os.Stdin, os.Stdout, os.Stderr, os.Args[1:]))
	}
}
