package coordinator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/hearth-gpu/hearth/proto"
)

// fsmHarness applies commands at increasing indexes, as Raft would.
type fsmHarness struct {
	t     *testing.T
	fsm   *FSM
	index uint64
}

func (h *fsmHarness) apply(c proto.Command) any {
	h.t.Helper()
	b, err := proto.EncodeCommand(c)
	if err != nil {
		h.t.Fatal(err)
	}
	h.index++
	return h.fsm.Apply(&raft.Log{Index: h.index, Type: raft.LogCommand, Data: b})
}

func (h *fsmHarness) mustJob(c proto.Command) *proto.Job {
	h.t.Helper()
	res := h.apply(c)
	j, ok := res.(*proto.Job)
	if !ok {
		h.t.Fatalf("apply %v = %v, want a job", c.CommandType(), res)
	}
	return j
}

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func seededFSM(t *testing.T) *fsmHarness {
	h := &fsmHarness{t: t, fsm: NewFSM()}
	h.apply(&proto.PutModel{Model: proto.Model{Name: "checkpoints/a.safetensors", Digest: testDigest("a"), Size: 100, Origin: "checkpoints/a.safetensors", CreatedAt: t0}})
	h.apply(&proto.RegisterHost{Host: proto.Host{ID: "h1", GPUs: []proto.GPU{{Index: 0, Slots: 2, SlotBytes: 1 << 30}}}})
	h.mustJob(&proto.SubmitJob{Job: proto.Job{ID: "j1", Spec: proto.JobSpec{Worker: &proto.WorkerPayload{}},
		Models: []proto.ModelRef{{Name: "checkpoints/a.safetensors", Digest: testDigest("a"), Size: 100}}, SubmittedAt: t0}})
	return h
}

func TestFSMJobLifecycle(t *testing.T) {
	h := seededFSM(t)
	placed := h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1", Slot: 1, Models: []proto.ModelPlacement{{Tier: proto.TierOrigin}}}})
	if placed.State != proto.JobPlaced || placed.Attempts != 1 || proto.EventIndex(placed.Placement.Epoch) != h.index {
		t.Fatalf("after place: state %s attempts %d epoch %d (index %d)", placed.State, placed.Attempts, placed.Placement.Epoch, h.index)
	}
	epoch := placed.Placement.Epoch
	if as := h.fsm.Assignments("h1"); len(as) != 1 || as[0].JobID != "j1" || as[0].Epoch != epoch || as[0].Slot != 1 {
		t.Fatalf("assignments for h1 = %+v", as)
	}
	for _, st := range []proto.JobState{proto.JobFetching, proto.JobLoading, proto.JobRunning, proto.JobUploading} {
		h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch, State: st, Time: t0.Add(time.Second)}})
	}
	done := h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch, State: proto.JobSucceeded,
		LoadS: 1.5, RunS: 2.5, Outputs: []proto.Output{{Name: "o.png", Size: 3}}, Time: t0.Add(5 * time.Second)}})
	if done.State != proto.JobSucceeded || done.LoadS != 1.5 || done.RunS != 2.5 || len(done.Outputs) != 1 ||
		done.StartedAt == nil || !done.StartedAt.Equal(t0.Add(time.Second)) || done.FinishedAt == nil {
		t.Fatalf("finished job = %+v", done)
	}
	if as := h.fsm.Assignments("h1"); len(as) != 0 {
		t.Fatalf("a finished job is still assigned: %+v", as)
	}
	// Copy-on-write: the value returned for the placed job did not change.
	if placed.State != proto.JobPlaced {
		t.Fatalf("an earlier *Job was mutated in place: state %s", placed.State)
	}
}

func TestFSMRefusesBadReports(t *testing.T) {
	h := seededFSM(t)
	placed := h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}})
	epoch := placed.Placement.Epoch
	h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch, State: proto.JobRunning}})
	cases := []struct {
		name string
		r    proto.JobReport
		want error
	}{
		{"stale epoch", proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch - 1, State: proto.JobSucceeded}, ErrStaleEpoch},
		{"other host", proto.JobReport{JobID: "j1", HostID: "h2", Epoch: epoch, State: proto.JobSucceeded}, ErrStaleEpoch},
		{"backwards", proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch, State: proto.JobFetching}, ErrBadTransition},
		{"to queued", proto.JobReport{JobID: "j1", HostID: "h1", Epoch: epoch, State: proto.JobQueued}, ErrBadTransition},
		{"unknown job", proto.JobReport{JobID: "nope", HostID: "h1", Epoch: epoch, State: proto.JobRunning}, ErrJobNotFound},
	}
	for _, tc := range cases {
		res := h.apply(&proto.ReportJob{Report: tc.r})
		if err, _ := res.(error); !errors.Is(err, tc.want) {
			t.Errorf("%s: apply = %v, want %v", tc.name, res, tc.want)
		}
	}
	if j, _ := h.fsm.Job("j1"); j.State != proto.JobRunning {
		t.Fatalf("refused reports changed the job: state %s", j.State)
	}
	if err, _ := h.apply(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}}).(error); !errors.Is(err, ErrBadTransition) {
		t.Fatalf("placing a running job = %v, want ErrBadTransition", err)
	}
	if err, _ := h.apply(&proto.SubmitJob{Job: proto.Job{ID: "j1"}}).(error); !errors.Is(err, ErrJobExists) {
		t.Fatalf("resubmitting j1 = %v, want ErrJobExists", err)
	}
}

func TestFSMUnreadableEntryIsRefusedNotApplied(t *testing.T) {
	h := seededFSM(t)
	before := h.fsm.Jobs(JobFilter{})
	res := h.fsm.Apply(&raft.Log{Index: 99, Type: raft.LogCommand, Data: []byte("garbage")})
	if err, _ := res.(error); !errors.Is(err, proto.ErrCorruptCommand) {
		t.Fatalf("apply garbage = %v, want ErrCorruptCommand", res)
	}
	if after := h.fsm.Jobs(JobFilter{}); !reflect.DeepEqual(before, after) {
		t.Fatal("an unreadable entry changed the state")
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.Bytes()
}

func TestFSMSnapshotRestore(t *testing.T) {
	h := seededFSM(t)
	for i := range 20 {
		h.mustJob(&proto.SubmitJob{Job: proto.Job{ID: fmt.Sprintf("k%02d", i), Spec: proto.JobSpec{Priority: i}, SubmittedAt: t0}})
	}
	h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}})
	b := snapshotBytes(t, h.fsm)

	restored := NewFSM()
	if err := restored.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if restored.Index() != h.fsm.Index() {
		t.Fatalf("restored index %d, want %d", restored.Index(), h.fsm.Index())
	}
	if !reflect.DeepEqual(restored.Jobs(JobFilter{}), h.fsm.Jobs(JobFilter{})) ||
		!reflect.DeepEqual(restored.Models(), h.fsm.Models()) || !reflect.DeepEqual(restored.Hosts(), h.fsm.Hosts()) {
		t.Fatal("restored state differs from the snapshotted state")
	}
}

func TestFSMRestoreRefusesTruncatedSnapshot(t *testing.T) {
	h := seededFSM(t)
	b := snapshotBytes(t, h.fsm)
	target := seededFSM(t)
	target.mustJob(&proto.SubmitJob{Job: proto.Job{ID: "only-here", SubmittedAt: t0}})
	for _, cut := range []int{0, 10, len(b) / 2, len(b) - 2} {
		if err := target.fsm.Restore(io.NopCloser(bytes.NewReader(b[:cut]))); err == nil {
			t.Fatalf("Restore of %d of %d bytes succeeded", cut, len(b))
		}
	}
	if _, ok := target.fsm.Job("only-here"); !ok {
		t.Fatal("a failed Restore replaced the state")
	}
}

// A host's long-poll wakes when its own assignments change: a placement
// there, a cancel, a requeue; not for another host's, and not for a
// progress report, which moves a job along without changing what the
// agent must run. The snapshot of a host's assignments follows along.
func TestFSMWakesOnlyTheHostWhoseAssignmentsChanged(t *testing.T) {
	h := seededFSM(t)
	h.apply(&proto.RegisterHost{Host: proto.Host{ID: "h2", GPUs: []proto.GPU{{Index: 0, Slots: 1, SlotBytes: 1 << 30}}}})
	woke := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	_, w1 := h.fsm.WatchHost("h1")
	_, w2 := h.fsm.WatchHost("h2")
	placed := h.mustJob(&proto.PlaceJob{JobID: "j1", Placement: proto.Placement{Host: "h1"}})
	if !woke(w1) || woke(w2) {
		t.Fatalf("after a placement on h1: h1 woke %v, h2 woke %v; want only h1", woke(w1), woke(w2))
	}
	idx1, w1 := h.fsm.WatchHost("h1")
	if idx1 != h.index {
		t.Fatalf("h1's index %d, want the placement's %d", idx1, h.index)
	}
	if as := h.fsm.Assignments("h1"); len(as) != 1 || as[0].JobID != "j1" || as[0].Epoch != placed.Placement.Epoch || len(h.fsm.Assignments("h2")) != 0 {
		t.Fatalf("assignments h1 %+v h2 %+v", as, h.fsm.Assignments("h2"))
	}
	h.mustJob(&proto.ReportJob{Report: proto.JobReport{JobID: "j1", HostID: "h1", Epoch: placed.Placement.Epoch, State: proto.JobRunning, Progress: &proto.Progress{Value: 1, Max: 2}}})
	if woke(w1) || woke(w2) {
		t.Fatal("a progress report woke a long-poll; it changes no assignment")
	}
	h.mustJob(&proto.CancelJob{JobID: "j1", Time: t0})
	if !woke(w1) || woke(w2) || len(h.fsm.Assignments("h1")) != 0 {
		t.Fatalf("after a cancel: h1 woke %v, h2 woke %v, h1 assignments %v", woke(w1), woke(w2), h.fsm.Assignments("h1"))
	}
}
