package coordinator

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/hearth-gpu/hearth/proto"
)

// TestRestartRecoversState stops a coordinator and starts a new one on the
// same data dir, twice: once recovering from the log alone, once from a
// snapshot (with the log compacted behind it) plus the entries after it.
func TestRestartRecoversState(t *testing.T) {
	dir := t.TempDir()
	edit := func(c *Config) {
		c.DataDir = dir
		c.TrailingLogs = 1 // compaction leaves almost nothing, so the snapshot must carry the state
	}
	ctx := context.Background()
	s, api := newTestServer(t, edit)
	putTestModel(t, api, "checkpoints/a.safetensors", 100)
	putTestModel(t, api, "loras/b.safetensors", 10)
	var ids []string
	for range 5 {
		j, err := api.SubmitRaw(ctx, workflowWith("a.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	want := snapshotOf(s)
	s.Close()

	// 1: from the log.
	s, api = newTestServer(t, edit)
	if got := snapshotOf(s); !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart from the log:\n got %+v\nwant %+v", got, want)
	}
	if st := s.raft.raft.Stats()["last_snapshot_index"]; st != "0" {
		t.Fatalf("expected no snapshot yet, raft says last_snapshot_index=%s", st)
	}

	// 2: from a snapshot plus the tail of the log written after it.
	if err := s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	j, err := api.SubmitRaw(ctx, workflowWith("a.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, j.ID)
	want = snapshotOf(s)
	s.Close()
	first, err := firstLogIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	if first <= 2 {
		t.Fatalf("log was not compacted (first index %d); the restart would not prove snapshot recovery", first)
	}
	s, _ = newTestServer(t, edit)
	if got := snapshotOf(s); !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart from the snapshot:\n got %+v\nwant %+v", got, want)
	}
	for _, id := range ids {
		if _, ok := s.FSM().Job(id); !ok {
			t.Fatalf("job %s lost across restarts", id)
		}
	}
}

type stateDump struct {
	Jobs   []*proto.Job
	Models []*proto.Model
	Hosts  []*proto.Host
}

func snapshotOf(s *Server) stateDump {
	f := s.FSM()
	return stateDump{Jobs: f.Jobs(JobFilter{}), Models: f.Models(), Hosts: f.Hosts()}
}

// firstLogIndex opens a stopped node's Raft log and returns its first index.
func firstLogIndex(dir string) (uint64, error) {
	store, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
	if err != nil {
		return 0, err
	}
	defer store.Close()
	return store.FirstIndex()
}
