package opstest

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// opsHost is one inventory host of the localhost run: its own loopback
// address and its own prefix, as if it were a machine of its own.
type opsHost struct {
	name, addr, prefix string
}

func (h opsHost) pidFile(daemon string) string {
	return filepath.Join(h.prefix, "run", "hearth", daemon+".pid")
}

// loopbackAddr picks a 127.0.0.x address this machine can listen on.
func loopbackAddr(t *testing.T, not string) string {
	t.Helper()
	for range 50 {
		addr := fmt.Sprintf("127.0.0.%d", 2+rand.IntN(250))
		if addr == not {
			continue
		}
		if ln, err := net.Listen("tcp", addr+":0"); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("opstest: no 127.0.0.x address to listen on")
	return ""
}

// freePort returns a TCP port free on addr just now.
func freePort(t *testing.T, addr string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// readPid reads a pid file, or returns 0.
func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// alive reports whether pid runs (and is not a zombie).
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// stopDaemons ends every daemon a pid file under the host's prefix names:
// SIGTERM, a wait, then SIGKILL to its process group (hearthctl starts each
// in a session of its own).
func stopDaemons(t *testing.T, h opsHost) {
	files, _ := filepath.Glob(filepath.Join(h.prefix, "run", "hearth", "*.pid"))
	for _, f := range files {
		pid := readPid(f)
		if !alive(pid) {
			continue
		}
		syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(20 * time.Second); alive(pid) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		if alive(pid) {
			t.Logf("opstest: %s (pid %d) ignored SIGTERM; killing it", f, pid)
		}
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// logTails prints the end of every daemon log under the host's prefix.
func logTails(t *testing.T, h opsHost) {
	logs, _ := filepath.Glob(filepath.Join(h.prefix, "var", "log", "hearth", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("%s (%s), last lines:\n%s", l, h.name, b)
	}
}

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

var recapLine = regexp.MustCompile(`(?m)^(\S+)\s+:\s+ok=[0-9]+\s+changed=([0-9]+)\s+unreachable=([0-9]+)\s+failed=([0-9]+)`)

// recap returns changed= per host from a playbook's PLAY RECAP.
func recap(t *testing.T, out string) map[string]int {
	t.Helper()
	changed := map[string]int{}
	for _, m := range recapLine.FindAllStringSubmatch(out, -1) {
		changed[m[1]], _ = strconv.Atoi(m[2])
	}
	return changed
}

// TestPlaybookOnLocalhost runs site.yml for real against this machine, in
// process mode: a coordinator host and an agent host, each under its own
// prefix in a temporary directory and on its own loopback address.
func TestPlaybookOnLocalhost(t *testing.T) {
	tools := needTools(t, "ansible-playbook", "python3", "setsid")
	bin := hearthBinary(t)
	base := t.TempDir()
	coord := opsHost{name: "coord-1", addr: loopbackAddr(t, ""), prefix: filepath.Join(base, "coord-1")}
	agent := opsHost{name: "gpu-1", addr: loopbackAddr(t, coord.addr), prefix: filepath.Join(base, "gpu-1")}
	// Registered before anything starts, so a failure anywhere below still
	// stops every daemon the playbook started.
	t.Cleanup(func() {
		if t.Failed() {
			logTails(t, coord)
			logTails(t, agent)
		}
		stopDaemons(t, agent)
		stopDaemons(t, coord)
	})
	origin := filepath.Join(base, "origin")
	if err := os.MkdirAll(origin, 0o755); err != nil {
		t.Fatal(err)
	}

	httpPort, raftPort, agentPort := freePort(t, coord.addr), freePort(t, coord.addr), freePort(t, agent.addr)
	inventory := fmt.Sprintf(`coordinators:
  hosts:
    %s:
      hearth_address: %s
      hearth_prefix: %s
gpu_agents:
  hosts:
    %s:
      hearth_address: %s
      hearth_prefix: %s
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: %s
`, coord.name, coord.addr, coord.prefix, agent.name, agent.addr, agent.prefix, tools["python3"])
	// A hearth binary that has `host drain` gets drained and undrained
	// around its restart below; one without it is restarted undrained.
	help, _ := run(base, nil, bin, "help")
	vars := map[string]any{
		"hearth_service_manager":       "process",
		"hearth_become":                false,
		"hearth_binary_src":            bin,
		"hearth_coordinator_http_port": httpPort,
		"hearth_coordinator_raft_port": raftPort,
		"hearth_agent_http_port":       agentPort,
		"hearth_simulated_gpus":        true,
		"hearth_sim_gpus":              "Simulated H200:141GiB",
		"hearth_origin_dir":            origin,
		"hearth_measure_bandwidth":     false,
		"hearth_coordinator_settings":  map[string]any{"raft_fast_timeouts": true},
		"hearth_agent_drain":           strings.Contains(help, "host drain"),
		"hearth_drain_timeout":         "2m",
		"hearth_wait_delay":            1,
		"hearth_wait_retries":          120,
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(base, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	invPath := write("inventory.yml", []byte(inventory))
	varsJSON, _ := json.Marshal(vars)
	varsPath := write("vars.json", varsJSON)

	playbook := func(extra ...string) string {
		t.Helper()
		args := append([]string{"-i", invPath, "-e", "@" + varsPath}, extra...)
		args = append(args, "site.yml")
		out, err := run(filepath.Join(repoRoot(t), "ansible"), ansibleEnv(t), tools["ansible-playbook"], args...)
		if err != nil {
			t.Fatalf("ansible-playbook %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	coordURL := fmt.Sprintf("http://%s:%d", coord.addr, httpPort)
	agentURL := fmt.Sprintf("http://%s:%d", agent.addr, agentPort)
	checkReady := func(when string) {
		t.Helper()
		if code, body := get(t, coordURL+"/readyz"); code != 200 {
			t.Fatalf("%s: coordinator /readyz: %d %s", when, code, body)
		}
		// The agent's /readyz where it has one, else /healthz.
		code, body := get(t, agentURL+"/readyz")
		if code == 404 {
			code, body = get(t, agentURL+"/healthz")
		}
		if code != 200 {
			t.Fatalf("%s: agent readiness: %d %s", when, code, body)
		}
		_, body = get(t, coordURL+"/v1/hosts")
		var hosts struct {
			Hosts []struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"hosts"`
		}
		if err := json.Unmarshal(body, &hosts); err != nil {
			t.Fatalf("%s: /v1/hosts: %v: %s", when, err, body)
		}
		if len(hosts.Hosts) != 1 || hosts.Hosts[0].ID != agent.name || hosts.Hosts[0].Status == "down" {
			t.Fatalf("%s: want host %s registered and not down, /v1/hosts says %s", when, agent.name, body)
		}
		for _, h := range []opsHost{coord, agent} {
			pending, _ := filepath.Glob(filepath.Join(h.prefix, "var", "lib", "hearth", "restart-pending-*"))
			if len(pending) > 0 {
				t.Errorf("%s: restart still marked pending on %s: %v", when, h.name, pending)
			}
		}
	}

	// A fresh install: binary, config, wrapper, both daemons started.
	playbook()
	checkReady("after the first run")
	if b, err := os.ReadFile(filepath.Join(coord.prefix, "etc", "hearth", "hearth.yaml")); err != nil || !strings.Contains(string(b), "coordinator:") || strings.Contains(string(b), "agent:") {
		t.Errorf("coordinator host's config file (err %v) should hold only a coordinator: section:\n%s", err, b)
	}
	pids := map[string]int{"coordinator": readPid(coord.pidFile("coordinator")), "agent": readPid(agent.pidFile("agent"))}

	// Again with nothing changed: nothing changes, nothing restarts.
	out := playbook()
	for host, changed := range recap(t, out) {
		if changed != 0 {
			t.Errorf("second run changed %d things on %s; want none:\n%s", changed, host, out)
		}
	}
	if p := readPid(coord.pidFile("coordinator")); p != pids["coordinator"] {
		t.Errorf("second run restarted the coordinator (pid %d, then %d)", pids["coordinator"], p)
	}
	if p := readPid(agent.pidFile("agent")); p != pids["agent"] {
		t.Errorf("second run restarted the agent (pid %d, then %d)", pids["agent"], p)
	}

	// A config change rolls both daemons: each restarts and is ready again.
	playbook("-e", "hearth_log_level=debug")
	checkReady("after the rolling restart")
	if p := readPid(coord.pidFile("coordinator")); p == pids["coordinator"] || !alive(p) {
		t.Errorf("config change: coordinator pid %d, then %d; want a new, running process", pids["coordinator"], p)
	}
	if p := readPid(agent.pidFile("agent")); p == pids["agent"] || !alive(p) {
		t.Errorf("config change: agent pid %d, then %d; want a new, running process", pids["agent"], p)
	}
	if alive(pids["coordinator"]) || alive(pids["agent"]) {
		t.Errorf("the daemons' old processes (%d, %d) still run after the restart", pids["coordinator"], pids["agent"])
	}
}
