package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-gpu/hearth/internal/fleetsim"
)

// hearth sim prints one JSON object per scenario and policy, the same for
// the same seed; a trace it writes replays to the same results.
func TestSimPrintsEveryPolicyAndReplaysItsTrace(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "steady.jsonl")
	args := []string{"sim", "--hosts", "4", "--duration", "60", "--scenarios", "steady", "--policies", "hearth,least-loaded,random", "--json"}
	code, out, stderr := runCLI(append(args, "--write-trace", trace)...)
	if code != 0 {
		t.Fatalf("hearth sim: exit %d: %s", code, stderr)
	}
	parse := func(out string) []fleetsim.Result {
		var rs []fleetsim.Result
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var r fleetsim.Result
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			rs = append(rs, r)
		}
		return rs
	}
	rs := parse(out)
	if len(rs) != 3 || rs[0].Policy != "hearth" || rs[1].Policy != "least-loaded" || rs[2].Policy != "random" {
		t.Fatalf("results %+v; want hearth, least-loaded and random", rs)
	}
	for _, r := range rs {
		if r.Scenario != "steady" || r.Hosts != 4 || r.Jobs == 0 || r.Finished == 0 || r.WarmBound <= 0 || r.WarmBound > 1 {
			t.Fatalf("result %+v", r)
		}
	}
	if _, err := os.Stat(trace); err != nil {
		t.Fatal(err)
	}
	// The standard scenario measured from a tenth of its 60 s on.
	code, out, stderr = runCLI("sim", "--hosts", "4", "--trace", trace, "--warmup", "6", "--policies", "hearth", "--json")
	if code != 0 {
		t.Fatalf("hearth sim --trace: exit %d: %s", code, stderr)
	}
	replay := parse(out)
	if len(replay) != 1 || replay[0].WarmRate != rs[0].WarmRate || replay[0].TTSP99 != rs[0].TTSP99 || replay[0].Finished != rs[0].Finished {
		t.Fatalf("the replayed trace gave %+v, the generated one %+v", replay, rs[0])
	}
}
