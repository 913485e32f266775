package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// agentFlags returns the agent's real flag set, parsed from args with the
// config file and environment applied.
func agentFlags(t *testing.T, args ...string) (func(name string) string, error) {
	t.Helper()
	fs := daemonFlags("agent")
	fs.SetOutput(io.Discard)
	err := parseFlags(fs, args)
	return func(name string) string { return fs.Lookup(name).Value.String() }, err
}

func TestConfigValidateAcceptsAGoodFile(t *testing.T) {
	secret := writeFile(t, "token", "s3cr3t\n")
	p := writeFile(t, "hearth.yaml", `
log_level: warn
coordinator:
  node_id: c1
  data_dir: /var/lib/hearth/coordinator
  http_addr: 127.0.0.1:7700
  bootstrap_expect: 3
  join: [http://127.0.0.2:7700, http://127.0.0.3:7700]
  heartbeat_grace: 15s
agent:
  data_dir: /var/lib/hearth/agent
  origin_dir: /srv/models
  cache_max: 1.5TB
  ram_max: 64GiB
  token: {file: `+secret+`}
  measure_bandwidth: false
`)
	code, out, stderr := runCLI("config", "validate", p)
	if code != 0 || !strings.Contains(out, "ok (coordinator, agent)") {
		t.Fatalf("validate: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

func TestConfigValidatePointsAtTheOffendingKey(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"unknown key", "agent:\n  data_dir: /d\n  origin_dir: /o\n  cach_max: 1GB\n", ":4:3: agent.cach_max: unknown key (did you mean cache_max?)"},
		{"kebab-case key", "coordinator:\n  data-dir: /d\n", ":2:3: coordinator.data-dir: unknown key (did you mean data_dir?)"},
		{"wrong section", "coordinator:\n  data_dir: /d\n  cache_max: 1GB\n", ":3:3: coordinator.cache_max: unknown key (it belongs in the agent: section)"},
		{"unknown top-level", "agnet:\n  data_dir: /d\n", ":1:1: agnet: unknown key (did you mean agent?)"},
		{"bad bool", "agent:\n  data_dir: /d\n  origin_dir: /o\n  measure_bandwidth: maybe\n", `:4:22: agent.measure_bandwidth: invalid value "maybe": parse error`},
		{"bad duration", "coordinator:\n  data_dir: /d\n  heartbeat_grace: soon\n", `:3:20: coordinator.heartbeat_grace: invalid value "soon": parse error`},
		{"bad int", "coordinator:\n  data_dir: /d\n  bootstrap_expect: three\n", `:3:21: coordinator.bootstrap_expect: invalid value "three": parse error`},
		{"bad size, the daemon's own check", "agent:\n  data_dir: /d\n  origin_dir: /o\n  cache_max: lots\n", `:4:3: agent.cache_max: "lots" is not a size like 512MiB`},
		{"bad peers", "coordinator:\n  data_dir: /d\n  peers: c1\n", `:3:3: coordinator.peers: peer "c1" must look like id=host:port`},
		{"missing required", "agent:\n  origin_dir: /o\n", `agent: agent needs --data-dir`},
		{"yaml syntax", "agent:\n  data_dir: /d\n   origin_dir: [\n", `:3:1: YAML syntax:`},
		{"not a mapping", "- agent\n", `:1:1: the file must be a mapping`},
		{"missing secret file", "agent:\n  data_dir: /d\n  origin_dir: /o\n  token_file: /does/not/exist\n", `:4:15: agent.token_file: cannot read the secret file`},
		{"nested value", "agent:\n  data_dir: {a: 1}\n", `:2:13: agent.data_dir: must be a value, a list, or {file: PATH}`},
	}
	for _, tc := range cases {
		p := writeFile(t, "hearth.yaml", tc.body)
		code, _, stderr := runCLI("config", "validate", p)
		if code != 2 || !strings.Contains(stderr, p+tc.want) && !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "is not a valid config") {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 with %q", tc.name, code, stderr, tc.want)
		}
	}
	if code, _, stderr := runCLI("config", "validate", "/does/not/exist.yaml"); code != 2 || !strings.Contains(stderr, "cannot read the config file") {
		t.Errorf("missing file: exit %d, %q", code, stderr)
	}
	if code, _, stderr := runCLI("config"); code != 2 || !strings.Contains(stderr, "validate FILE, or defaults") {
		t.Errorf("bare config: exit %d, %q", code, stderr)
	}
}

func TestConfigPrecedenceDefaultsFileEnvFlags(t *testing.T) {
	p := writeFile(t, "hearth.yaml", `
log_level: debug
agent:
  data_dir: /from/file
  cache_max: 1GB
  ram_max: 2GB
  slot_size: 12GiB
  log_level: warn
`)
	t.Setenv("HEARTH_AGENT_RAM_MAX", "3GB")
	t.Setenv("HEARTH_AGENT_SLOT_SIZE", "16GiB")
	get, err := agentFlags(t, "--config", p, "--slot-size", "20GiB")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"reserve":   "2GiB",       // default
		"data-dir":  "/from/file", // file
		"cache-max": "1GB",        // file
		"ram-max":   "3GB",        // env over file
		"slot-size": "20GiB",      // flag over env over file
		"log-level": "warn",       // the section over the shared key
	} {
		if got := get(name); got != want {
			t.Errorf("--%s = %q, want %q", name, got, want)
		}
	}
	// A shared key applies where the section does not set it.
	p2 := writeFile(t, "shared.yaml", "log_level: error\nagent:\n  data_dir: /d\n")
	if get, err := agentFlags(t, "--config", p2); err != nil || get("log-level") != "error" {
		t.Fatalf("shared log_level not applied: %v", err)
	}
	// HEARTH_CONFIG names the file when --config is not given.
	t.Setenv("HEARTH_CONFIG", p2)
	if get, err := agentFlags(t); err != nil || get("data-dir") != "/d" {
		t.Fatalf("HEARTH_CONFIG not read: %v", err)
	}
}

func TestConfigSecretsFromFiles(t *testing.T) {
	tok := writeFile(t, "token", "  agent-secret\n")
	key := writeFile(t, "access", "AKIA123\n")
	p := writeFile(t, "hearth.yaml", "agent:\n  token: {file: "+tok+"}\n  s3_access_key_file: "+key+"\n")
	get, err := agentFlags(t, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	if get("token") != "agent-secret" || get("s3-access-key") != "AKIA123" {
		t.Fatalf("token %q, s3 access key %q: secrets not read from their files", get("token"), get("s3-access-key"))
	}
	other := writeFile(t, "token2", "from-env-file")
	t.Setenv("HEARTH_AGENT_TOKEN_FILE", other)
	if get, err := agentFlags(t, "--config", p); err != nil || get("token") != "from-env-file" {
		t.Fatalf("HEARTH_AGENT_TOKEN_FILE: %q, %v", get("token"), err)
	}
}

func TestConfigEnvErrorsAreUsageErrors(t *testing.T) {
	t.Setenv("HEARTH_AGENT_CACHE_MAXX", "1GB")
	code, _, stderr := runCLI("agent", "--data-dir", "x", "--origin-dir", "y")
	if code != 2 || !strings.Contains(stderr, "HEARTH_AGENT_CACHE_MAXX names no flag of hearth agent (did you mean HEARTH_AGENT_CACHE_MAX?)") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	os.Unsetenv("HEARTH_AGENT_CACHE_MAXX")
	t.Setenv("HEARTH_AGENT_MEASURE_BANDWIDTH", "sometimes")
	if code, _, stderr := runCLI("agent", "--data-dir", "x", "--origin-dir", "y"); code != 2 || !strings.Contains(stderr, `HEARTH_AGENT_MEASURE_BANDWIDTH: invalid value "sometimes": parse error`) {
		t.Fatalf("bad env value: exit %d, stderr %q", code, stderr)
	}
	// A daemon given a bad file refuses to start and says where.
	os.Unsetenv("HEARTH_AGENT_MEASURE_BANDWIDTH")
	p := writeFile(t, "hearth.yaml", "coordinator:\n  data_dir: x\n  http_adr: 127.0.0.1:1\n")
	if code, _, stderr := runCLI("coordinator", "--config", p); code != 2 || !strings.Contains(stderr, p+":3:3: coordinator.http_adr: unknown key (did you mean http_addr?)") {
		t.Fatalf("bad file: exit %d, stderr %q", code, stderr)
	}
}

func TestConfigDefaultsListEveryFlag(t *testing.T) {
	t.Setenv("HEARTH_TOKEN", "do-not-print-me")
	code, out, _ := runCLI("config", "defaults")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if strings.Contains(out, "do-not-print-me") {
		t.Fatal("config defaults printed a secret taken from the environment")
	}
	for _, sec := range configSections {
		for _, k := range configKeys(daemonFlags(sec)) {
			if !strings.Contains(out, "\n  "+k+": ") || !strings.Contains(out, envOf(sec, k)) {
				t.Errorf("config defaults lacks %s.%s or its variable", sec, k)
			}
		}
	}
	// The output is itself a valid config for both daemons but for the
	// required keys it leaves empty.
	p := writeFile(t, "defaults.yaml", out)
	code, _, stderr := runCLI("config", "validate", p)
	if code != 2 || strings.Contains(stderr, "unknown key") || strings.Contains(stderr, "parse error") {
		t.Fatalf("defaults do not read back: exit %d, %s", code, stderr)
	}
}
