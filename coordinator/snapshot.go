package coordinator

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/proto"
)

// Snapshot format: JSON lines. The first line is a snapshotHeader with the
// record counts; then one snapshotRecord per line: models, hosts,
// coordinators, idempotency keys, then jobs. Format 1 (before coordinators
// and keys) is still read. Restore checks the counts, so a truncated snapshot is refused
// rather than half-loaded. JSON keeps the format readable with jq and reuses
// the API's stable field names; compression is left to a later change if
// snapshot size ever matters more than restore speed.
const snapshotFormat = 2

type snapshotHeader struct {
	Format int    `json:"format"`
	Index  uint64 `json:"index"`
	Models int    `json:"models"`
	Hosts  int    `json:"hosts"`
	Jobs   int    `json:"jobs"`
	Coords int    `json:"coordinators,omitempty"`
	Idem   int    `json:"idempotency_keys,omitempty"`
}

func (h *snapshotHeader) records() int { return h.Models + h.Hosts + h.Jobs + h.Coords + h.Idem }

type snapshotRecord struct {
	Model *proto.Model       `json:"model,omitempty"`
	Host  *proto.Host        `json:"host,omitempty"`
	Job   *proto.Job         `json:"job,omitempty"`
	Coord *proto.Coordinator `json:"coordinator,omitempty"`
	Idem  *idemEntry         `json:"idempotency_key,omitempty"`
}

type fsmSnapshot struct {
	index  uint64
	models []*proto.Model
	hosts  []*proto.Host
	coords []*proto.Coordinator
	idem   []idemEntry
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
	s.coords = slices.Collect(maps.Values(f.coords))
	s.idem = slices.Collect(maps.Values(f.idem))
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
	hdr := snapshotHeader{Format: snapshotFormat, Index: s.index, Models: len(s.models), Hosts: len(s.hosts), Jobs: len(s.jobs),
		Coords: len(s.coords), Idem: len(s.idem)}
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
	for _, c := range s.coords {
		if err := enc.Encode(snapshotRecord{Coord: c}); err != nil {
			return fmt.Errorf("coordinator: write snapshot: %w", err)
		}
	}
	for i := range s.idem {
		if err := enc.Encode(snapshotRecord{Idem: &s.idem[i]}); err != nil {
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
	if hdr.Format < 1 || hdr.Format > snapshotFormat {
		return fmt.Errorf("coordinator: snapshot format %d, this build reads 1 to %d", hdr.Format, snapshotFormat)
	}
	models := make(map[string]*proto.Model, hdr.Models)
	hosts := make(map[string]*proto.Host, hdr.Hosts)
	jobs := make(map[string]*proto.Job, hdr.Jobs)
	coords := make(map[string]*proto.Coordinator, hdr.Coords)
	idem := make(map[string]idemEntry, hdr.Idem)
	for n := 0; n < hdr.records(); n++ {
		var r snapshotRecord
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("coordinator: restore snapshot record %d of %d: %w", n+1, hdr.records(), err)
		}
		switch {
		case r.Model != nil:
			models[r.Model.Name] = r.Model
		case r.Host != nil:
			hosts[r.Host.ID] = r.Host
		case r.Job != nil:
			jobs[r.Job.ID] = r.Job
		case r.Coord != nil:
			coords[r.Coord.ID] = r.Coord
		case r.Idem != nil:
			idem[r.Idem.Key] = *r.Idem
		default:
			return fmt.Errorf("coordinator: restore snapshot record %d is empty", n+1)
		}
	}
	if len(models) != hdr.Models || len(hosts) != hdr.Hosts || len(jobs) != hdr.Jobs || len(coords) != hdr.Coords || len(idem) != hdr.Idem {
		return fmt.Errorf("coordinator: snapshot header promises %d models, %d hosts, %d jobs, %d coordinators, %d keys; records hold %d, %d, %d, %d, %d",
			hdr.Models, hdr.Hosts, hdr.Jobs, hdr.Coords, hdr.Idem, len(models), len(hosts), len(jobs), len(coords), len(idem))
	}
	live := make(map[string]*proto.Job)
	queued := make(map[string]*proto.Job)
	hooks := make(map[string]struct{})
	for id, j := range jobs {
		if !j.State.Terminal() {
			live[id] = j
		}
		if j.State == proto.JobQueued {
			queued[id] = j
		}
		if slices.ContainsFunc(j.Webhooks, func(d proto.WebhookDelivery) bool { return d.State == proto.DeliveryPending }) {
			hooks[id] = struct{}{}
		}
	}
	byHost := make(map[string]map[string]*proto.Job)
	hostIndex := make(map[string]uint64, len(hosts))
	for id := range hosts {
		hostIndex[id] = hdr.Index // every host's assignments may have changed
	}
	for id, j := range live {
		if j.Placement != nil {
			if byHost[j.Placement.Host] == nil {
				byHost[j.Placement.Host] = make(map[string]*proto.Job)
			}
			byHost[j.Placement.Host][id] = j
			hostIndex[j.Placement.Host] = hdr.Index
		}
	}
	f.mu.Lock()
	f.models, f.hosts, f.jobs, f.coords, f.idem = models, hosts, jobs, coords, idem
	f.live, f.queued, f.hooks = live, queued, hooks
	f.byHost, f.hostIndex = byHost, hostIndex
	for host, ch := range f.hostWake {
		close(ch)
		delete(f.hostWake, host)
	}
	f.hostsGen++
	f.byDigest = nil
	f.advance(hdr.Index)
	restored := f.onRestore
	f.mu.Unlock()
	if restored != nil {
		restored()
	}
	return nil
}
