package opstest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// ansibleEnv keeps Ansible's scratch files in the test's directory and its
// output plain.
func ansibleEnv(t *testing.T) []string {
	tmp := t.TempDir()
	return []string{
		"ANSIBLE_LOCAL_TEMP=" + filepath.Join(tmp, "local"),
		"ANSIBLE_REMOTE_TMP=" + filepath.Join(tmp, "remote"),
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_FORCE_COLOR=0",
		"ANSIBLE_RETRY_FILES_ENABLED=0",
		"NO_COLOR=1",
	}
}

// copyAnsible copies ansible/ into a temporary directory, so a check can
// run on (or break) a copy without touching the tree.
func copyAnsible(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "ansible")
	if err := os.CopyFS(dst, os.DirFS(filepath.Join(repoRoot(t), "ansible"))); err != nil {
		t.Fatal(err)
	}
	return dst
}

// lint runs ansible-lint with the production profile (the strictest) on
// the project in dir. Without a path argument it finds every playbook,
// role and vars file itself; given "." it would lint the directory as one
// file and pass anything.
func lint(t *testing.T, ansibleLint, dir string) (string, error) {
	t.Helper()
	return run(dir, ansibleEnv(t), ansibleLint, "--offline", "--profile", "production", "--nocolor")
}

func TestAnsibleLintProductionProfile(t *testing.T) {
	tools := needTools(t, "ansible-lint")
	dir := copyAnsible(t)
	out, err := lint(t, tools["ansible-lint"], dir)
	if err != nil {
		t.Fatalf("ansible-lint --profile production on ansible/: %v\n%s", err, out)
	}
	// Every YAML file was looked at.
	var yml int
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".yml") {
			yml++
		}
		return err
	})
	m := regexp.MustCompile(`on ([0-9]+) files`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("ansible-lint did not say how many files it linted:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < yml {
		t.Errorf("ansible-lint linted %d files, but ansible/ has %d YAML files:\n%s", n, yml, out)
	}
}

// The lint check must be able to fail: a task without a name, a fully
// qualified module name or changed_when is caught.
func TestAnsibleLintCatchesMistakes(t *testing.T) {
	tools := needTools(t, "ansible-lint")
	dir := copyAnsible(t)
	tasks := filepath.Join(dir, "roles", "agent", "tasks", "main.yml")
	f, err := os.OpenFile(tasks, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n- command: nvidia-smi\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := lint(t, tools["ansible-lint"], dir)
	if err == nil || !strings.Contains(out, "fqcn") {
		t.Errorf("ansible-lint on a role with a bare command task: want a failure naming fqcn, got err=%v:\n%s", err, out)
	}
}

func TestPlaybookSyntax(t *testing.T) {
	tools := needTools(t, "ansible-playbook")
	dir := filepath.Join(repoRoot(t), "ansible")
	out, err := run(dir, ansibleEnv(t), tools["ansible-playbook"], "-i", "inventory.example.yml", "--syntax-check", "site.yml")
	if err != nil {
		t.Errorf("ansible-playbook --syntax-check site.yml: %v\n%s", err, out)
	}
	// And a broken playbook fails the same check.
	broken := copyAnsible(t)
	site := filepath.Join(broken, "site.yml")
	b, err := os.ReadFile(site)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(site, []byte(strings.Replace(string(b), "  roles:\n    - agent\n", "  roles:\n    - agent\n  hostz: all\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(broken, ansibleEnv(t), tools["ansible-playbook"], "-i", "inventory.example.yml", "--syntax-check", "site.yml"); err == nil {
		t.Errorf("ansible-playbook --syntax-check passed a play with an unknown keyword:\n%s", out)
	}
}
