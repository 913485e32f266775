package coordinator

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/proto"
)

// Snapshot format: JSON lines. The first line is a snapshotHeader with the
// record counts; then one snapshotRecord per line, models first, then hosts,
// then jobs. Restore checks the counts, so a truncated snapshot is refused
// rather than half-loaded. JSON keeps the format readable with jq and reuses
// the API's stable field names; compression is left to a later change if
// snapshot size ever matters more than restore speed.
const snapshotFormat = 1

type snapshotHeader struct {
	Format int    `json:"format"`
	Index  uint64 `json:"index"`
	Models int    `json:"models"`
	Hosts  int    `json:"hosts"`
	Jobs   int    `json:"jobs"`
}

type snapshotRecord struct {
	Model *proto.Model `json:"model,omitempty"`
	Host  *proto.Host  `json:"host,omitempty"`
	Job   *proto.Job   `json:"job,omitempty"`
}

type fsmSnapshot struct {
	index  uint64
	models []*proto.Model
	hosts  []*proto.Host
	jobs   []*proto.Job
}

// Snapshot implements raft.FSM. It copies only the maps' pointers under the
// lock; the values are immutable (see the FSM's contract).
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &fsmSnapshot{
		index:  f.index,
		models: make([]*proto.Model, 0, len(f.models)),
		hosts:  make([]*proto.Host, 0, len(f.hosts)),
		jobs:   make([]*proto.Job, 0, len(f.jobs)),
	}
	for _, m := range f.models {
		s.models = append(s.models, m)
	}
	for _, h := range f.hosts {
		s.hosts = append(s.hosts, h)
	}
	for _, j := range f.jobs {
		s.jobs = append(s.jobs, j)
	}
	return s, nil
}

// Persist implements raft.FSMSnapshot.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.write(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	hdr := snapshotHeader{Format: snapshotFormat, Index: s.index, Models: len(s.models), Hosts: len(s.hosts), Jobs: len(s.jobs)}
	if err := enc.Encode(hdr); err != nil {
		return fmt.Errorf("coordinator: write snapshot header: %w", err)
	}
	for _, m := range s.models {
		if err := enc.Encode(snapshotRecord{Model: m}); err != nil {
			return fmt.Errorf("coordinator: write snapshot: %w", err)
		}
	}
	for _, h := range s.hosts {
		if err := enc.Encode(snapshotRecord{Host: h}); err != nil {
			return fmt.Errorf("coordinator: write snapshot: %w", err)
		}
	}
	for _, j := range s.jobs {
		if err := enc.Encode(snapshotRecord{Job: j}); err != nil {
			return fmt.Errorf("coordinator: write snapshot: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("coordinator: write snapshot: %w", err)
	}
	return nil
}

// Release implements raft.FSMSnapshot.
func (s *fsmSnapshot) Release() {}

// Restore implements raft.FSM: it replaces the whole state with the
// snapshot's, or leaves the state untouched if the snapshot is unreadable.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(rc, 1<<20))
	dec.DisallowUnknownFields()
	var hdr snapshotHeader
	if err := dec.Decode(&hdr); err != nil {
		return fmt.Errorf("coordinator: restore snapshot header: %w", err)
	}
	if hdr.Format != snapshotFormat {
		return fmt.Errorf("coordinator: snapshot format %d, this build reads %d", hdr.Format, snapshotFormat)
	}
	models := make(map[string]*proto.Model, hdr.Models)
	hosts := make(map[string]*proto.Host, hdr.Hosts)
	jobs := make(map[string]*proto.Job, hdr.Jobs)
	for n := 0; n < hdr.Models+hdr.Hosts+hdr.Jobs; n++ {
		var r snapshotRecord
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("coordinator: restore snapshot record %d of %d: %w", n+1, hdr.Models+hdr.Hosts+hdr.Jobs, err)
		}
		switch {
		case r.Model != nil:
			models[r.Model.Name] = r.Model
		case r.Host != nil:
			hosts[r.Host.ID] = r.Host
		case r.Job != nil:
			jobs[r.Job.ID] = r.Job
		default:
			return fmt.Errorf("coordinator: restore snapshot record %d is empty", n+1)
		}
	}
	if len(models) != hdr.Models || len(hosts) != hdr.Hosts || len(jobs) != hdr.Jobs {
		return fmt.Errorf("coordinator: snapshot header promises %d models, %d hosts, %d jobs; records hold %d, %d, %d",
			hdr.Models, hdr.Hosts, hdr.Jobs, len(models), len(hosts), len(jobs))
	}
	f.mu.Lock()
	f.models, f.hosts, f.jobs = models, hosts, jobs
	f.advance(hdr.Index)
	f.mu.Unlock()
	return nil
}
