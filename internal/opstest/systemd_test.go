package opstest

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The units, as systemd/ ships them.
var units = map[string]string{
	"coordinator": "hearth-coordinator.service",
	"agent":       "hearth-agent.service",
}

// The binary and config file the units' ExecStart= names.
const (
	installedBinary = "/usr/local/bin/hearth"
	installedConfig = "/etc/hearth/hearth.yaml"
)

func readUnit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stageUnits copies the units into a temporary directory with ExecStart=
// naming bin instead of the installed binary (verify checks that the
// binary exists), after edit, if given, changed their text.
func stageUnits(t *testing.T, bin string, edit func(name, text string) string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for _, daemon := range []string{"coordinator", "agent"} {
		name := units[daemon]
		text := readUnit(t, name)
		if !strings.Contains(text, "ExecStart="+installedBinary+" ") {
			t.Fatalf("%s: ExecStart= does not start %s", name, installedBinary)
		}
		text = strings.ReplaceAll(text, "ExecStart="+installedBinary+" ", "ExecStart="+bin+" ")
		if edit != nil {
			text = edit(name, text)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// foreignUnitLine matches the one kind of output verify may print that is
// not about the units under test. Where systemd runs, verify also loads the
// units ours are ordered after (network-online.target and what it pulls
// in) from the system's unit directories, and warns about their problems
// too, each line starting with that unit's file. In a container without a
// running systemd it prints nothing at all for a good unit.
var foreignUnitLine = regexp.MustCompile(`^(/etc|/run|/usr/lib|/usr/local/lib|/lib)/systemd/(system|user)/[^:/]+:[0-9]+: `)

// verifyProblems runs systemd-analyze verify on the unit files and returns
// every line of its output (stdout and stderr) other than foreign-unit
// warnings, and its exit status when it is not 0. Unknown keys and values
// that do not parse only warn, with status 0, so each line counts.
func verifyProblems(t *testing.T, analyze string, paths []string) []string {
	t.Helper()
	out, err := run(filepath.Dir(paths[0]), []string{"SYSTEMD_LOG_COLOR=0", "SYSTEMD_PAGER="},
		analyze, append([]string{"verify", "--man=no"}, paths...)...)
	var problems []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || foreignUnitLine.MatchString(line) {
			continue
		}
		problems = append(problems, line)
	}
	if err != nil {
		problems = append(problems, "systemd-analyze verify: "+err.Error())
	}
	return problems
}

func TestUnitsVerifyWithoutWarnings(t *testing.T) {
	tools := needTools(t, "systemd-analyze")
	paths := stageUnits(t, hearthBinary(t), nil)
	if problems := verifyProblems(t, tools["systemd-analyze"], paths); len(problems) > 0 {
		t.Errorf("systemd-analyze verify found problems in the units:\n  %s", strings.Join(problems, "\n  "))
	}
}

// The checker above must be able to fail: each broken unit is caught.
func TestUnitsVerifyCatchesMistakes(t *testing.T) {
	tools := needTools(t, "systemd-analyze")
	bin := hearthBinary(t)
	cases := []struct {
		name, want string
		edit       func(text string) string
	}{
		{"unknown key", "Unknown key", func(s string) string {
			return strings.Replace(s, "ProtectSystem=strict", "ProtectSystems=strict", 1)
		}},
		{"bad value", "restart specifier", func(s string) string {
			return strings.Replace(s, "Restart=on-failure", "Restart=sometimes", 1)
		}},
		{"bad device", "device node path", func(s string) string {
			return strings.Replace(s, "[Service]\n", "[Service]\nDeviceAllow=nvidia0 rw\n", 1)
		}},
		{"missing executable", "not executable", func(s string) string {
			return strings.Replace(s, "ExecStart="+bin+" ", "ExecStart="+bin+".missing ", 1)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			paths := stageUnits(t, bin, func(name, text string) string {
				if name != units["agent"] {
					return text
				}
				return c.edit(text)
			})
			problems := verifyProblems(t, tools["systemd-analyze"], paths)
			joined := strings.Join(problems, "\n")
			if !strings.Contains(joined, c.want) || !strings.Contains(joined, units["agent"]) {
				t.Errorf("verify of a unit with a %s: want a problem naming %s and saying %q, got:\n  %s",
					c.name, units["agent"], c.want, strings.Join(problems, "\n  "))
			}
		})
	}
}

// unitSettings returns the [Service] section's settings, each key's values
// in order.
func unitSettings(text string) map[string][]string {
	settings := map[string][]string{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			if k, v, ok := strings.Cut(line, "="); ok {
				settings[k] = append(settings[k], v)
			}
		}
	}
	return settings
}

// The units start the daemon with the config-file flag it has, and keep the
// settings the daemons and the roles rely on.
func TestUnitsStartTheDaemons(t *testing.T) {
	bin := hearthBinary(t)
	for daemon, name := range units {
		s := unitSettings(readUnit(t, name))
		want := strings.Join([]string{installedBinary, daemon, "--config", installedConfig}, " ")
		if got := strings.Join(s["ExecStart"], "|"); got != want {
			t.Errorf("%s: ExecStart=%s, want %s", name, got, want)
		}
		help, _ := run(repoRoot(t), nil, bin, daemon, "-h")
		if !strings.Contains(help, "  -config ") {
			t.Errorf("%s: hearth %s -h lists no -config flag:\n%s", name, daemon, help)
		}
		must := map[string]string{
			"Type": "notify", "NotifyAccess": "main", "Restart": "on-failure", "User": "hearth",
			"StateDirectory": "hearth/" + daemon, "EnvironmentFile": "-/etc/hearth/" + daemon + ".env",
			"ProtectSystem": "strict", "NoNewPrivileges": "yes",
		}
		if daemon == "agent" {
			must["LimitMEMLOCK"] = "infinity"
			must["KillMode"] = "mixed"
			must["DevicePolicy"] = "closed"
		}
		for k, v := range must {
			if !slices.Contains(s[k], v) {
				t.Errorf("%s: want %s=%s, have %q", name, k, v, s[k])
			}
		}
		if len(s["WatchdogSec"]) == 0 {
			t.Errorf("%s: no WatchdogSec=", name)
		}
	}
}

// The agent's unit gives it longer to stop than the agent gives running jobs.
func TestAgentStopTimeoutCoversShutdownTimeout(t *testing.T) {
	tools := needTools(t, "systemd-analyze")
	out, err := run(repoRoot(t), nil, hearthBinary(t), "config", "defaults")
	if err != nil {
		t.Fatalf("hearth config defaults: %v\n%s", err, out)
	}
	var defaults struct {
		Agent map[string]any `yaml:"agent"`
	}
	if err := yaml.Unmarshal([]byte(out), &defaults); err != nil {
		t.Fatal(err)
	}
	v, ok := defaults.Agent["shutdown_timeout"]
	if !ok {
		t.Skip("the agent has no shutdown_timeout key yet")
	}
	shutdown, err := time.ParseDuration(v.(string))
	if err != nil {
		t.Fatalf("agent shutdown_timeout %v: %v", v, err)
	}
	stop := unitSettings(readUnit(t, units["agent"]))["TimeoutStopSec"]
	if len(stop) != 1 {
		t.Fatalf("agent unit: want one TimeoutStopSec=, have %q", stop)
	}
	span, err := run(repoRoot(t), nil, tools["systemd-analyze"], "timespan", stop[0])
	if err != nil {
		t.Fatalf("systemd-analyze timespan %s: %v\n%s", stop[0], err, span)
	}
	m := regexp.MustCompile(`(?m)μs: ([0-9]+)`).FindStringSubmatch(span)
	if m == nil {
		t.Fatalf("systemd-analyze timespan %s printed no μs: line:\n%s", stop[0], span)
	}
	us, _ := strconv.ParseInt(m[1], 10, 64)
	if got := time.Duration(us) * time.Microsecond; got <= shutdown {
		t.Errorf("agent unit: TimeoutStopSec=%s (%v) must be longer than the agent's shutdown timeout %v", stop[0], got, shutdown)
	}
}
