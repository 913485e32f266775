package opstest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// envRequire, set to 1, turns a missing tool into a failure instead of a skip.
const envRequire = "HEARTH_REQUIRE_OPS"

// needTools returns the path of each tool, or skips t (fails it under
// HEARTH_REQUIRE_OPS=1) when one is missing.
func needTools(t *testing.T, tools ...string) map[string]string {
	t.Helper()
	paths := map[string]string{}
	for _, tool := range tools {
		p, err := exec.LookPath(tool)
		if err != nil {
			if os.Getenv(envRequire) == "1" {
				t.Fatalf("opstest: %s is not installed (make ops-tools installs it; %s=1 makes this a failure)", tool, envRequire)
			}
			t.Skipf("opstest: %s is not installed; make ops-tools installs it", tool)
		}
		paths[tool] = p
	}
	return paths
}

// repoRoot is the module's root directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
	out  []byte
}

// TestMain removes the binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// hearthBinary builds ./cmd/hearth once per test run and returns its path.
func hearthBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "opstest-bin-")
		if built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "hearth")
		cmd := exec.Command("go", "build", "-o", built.path, "./cmd/hearth")
		cmd.Dir = repoRoot(t)
		built.out, built.err = cmd.CombinedOutput()
	})
	if built.err != nil {
		t.Fatalf("opstest: go build ./cmd/hearth: %v\n%s", built.err, built.out)
	}
	return built.path
}

// run runs a command in dir and returns its combined output and error.
func run(dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
