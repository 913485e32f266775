package proto

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
	"time"
)

func TestParseDigest(t *testing.T) {
	sum := sha256.Sum256([]byte("hearth"))
	good := DigestFromSum(sum[:])
	if _, err := ParseDigest(string(good)); err != nil {
		t.Fatalf("ParseDigest(%q) = %v, want ok", good, err)
	}
	if len(good.Short()) != 12 || !strings.HasPrefix(good.Hex(), good.Short()) {
		t.Fatalf("Short %q is not the first 12 hex digits of %q", good.Short(), good.Hex())
	}
	for _, bad := range []string{"", "sha256:", "md5:" + good.Hex(), "sha256:" + strings.ToUpper(good.Hex()), string(good) + "0", "sha256:" + strings.Repeat("g", 64)} {
		if _, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q) accepted a malformed digest", bad)
		}
	}
}

func TestValidateModelName(t *testing.T) {
	for _, ok := range []string{"checkpoints/sd_xl_base_1.0.safetensors", "loras/SDXL/pixel art.safetensors", "a", "vae/x..y.pt"} {
		if err := ValidateModelName(ok); err != nil {
			t.Errorf("ValidateModelName(%q) = %v, want ok", ok, err)
		}
	}
	for _, bad := range []string{"", "/etc/passwd", "../x", "checkpoints/../../x", "a//b", "a/./b", "a/", `a\b`, "a\x00b", "a\nb", strings.Repeat("x", 1025)} {
		if err := ValidateModelName(bad); err == nil {
			t.Errorf("ValidateModelName(%q) accepted an unsafe name", bad)
		}
	}
}

func TestModelValidate(t *testing.T) {
	sum := sha256.Sum256(nil)
	m := Model{Name: "checkpoints/x.safetensors", Digest: DigestFromSum(sum[:]), Size: 10}
	if fe := m.Validate(); fe != nil {
		t.Fatalf("Validate() = %v", fe)
	}
	if m.Origin != m.Name {
		t.Fatalf("Origin defaulted to %q, want the name", m.Origin)
	}
	for field, mut := range map[string]func(*Model){
		"name":   func(m *Model) { m.Name = "../x" },
		"digest": func(m *Model) { m.Digest = "sha256:nope" },
		"size":   func(m *Model) { m.Size = -1 },
		"origin": func(m *Model) { m.Origin = "/abs" },
	} {
		c := m
		mut(&c)
		if fe := c.Validate(); fe == nil || fe.Field != field {
			t.Errorf("mutating %s: Validate() = %v, want a FieldError on %q", field, fe, field)
		}
	}
}

func sampleCommands() []Command {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	sum := sha256.Sum256([]byte("m"))
	d := DigestFromSum(sum[:])
	return []Command{
		&PutModel{Model: Model{Name: "checkpoints/a.safetensors", Digest: d, Size: 42, Origin: "checkpoints/a.safetensors", CreatedAt: now}},
		&SubmitJob{Job: Job{ID: "j1", Spec: JobSpec{Workflow: []byte(`{"4":{"class_type":"CheckpointLoaderSimple","inputs":{"ckpt_name":"a.safetensors"}}}`), Priority: 5},
			Models: []ModelRef{{Name: "checkpoints/a.safetensors", Digest: d, Size: 42}}, State: JobQueued, SubmittedAt: now}},
		&RegisterHost{Host: Host{ID: "h1", DeviceKind: "simulated", GPUs: []GPU{{Index: 0, Name: "H200", MemoryTotal: 1 << 30, SlotBytes: 1 << 28, Slots: 4}}}},
		&PlaceJob{JobID: "j1", Placement: Placement{Host: "h1", Models: []ModelPlacement{{Name: "checkpoints/a.safetensors", Digest: d, Tier: TierDisk, Seconds: 0.5}}, EstimateS: 0.5}},
		&ReportJob{Report: JobReport{JobID: "j1", HostID: "h1", Epoch: 4, State: JobRunning, Progress: &Progress{Value: 1, Max: 4}, Time: now}},
		&SubmitJobs{Items: []SubmitItem{{Job: Job{ID: "j2", Spec: JobSpec{Exec: &ExecPayload{Command: []string{"true"}}, Webhook: "https://h.example/x", TimeoutS: 60},
			SubmittedAt: now, IdempotencyKey: "k"}, RequestHash: "abc"}}},
		&CancelJob{JobID: "j1", Reason: "no longer needed", Time: now},
		&RetryJob{JobID: "j1", Time: now},
		&MarkHostDown{HostID: "h1", Reason: "no heartbeat", Time: now, Backoff: time.Second, BackoffMax: time.Minute},
		&TimeoutJobs{Items: []TimeoutItem{{JobID: "j1", Epoch: 7, Reason: "ran too long"}}, Time: now},
		&WebhookResults{Results: []WebhookResult{{JobID: "j1", DeliveryID: "msg_j1_9", Attempt: 2, Status: 500, Error: "500", NextAt: now, Time: now}}},
		&SetCoordinator{Coordinator: Coordinator{ID: "c1", HTTPAddr: "10.0.0.1:7700", RaftAddr: "10.0.0.1:7701"}},
		&PlaceJobs{Items: []PlaceJob{{JobID: "j1", Placement: Placement{Host: "h1"}}}},
		&DrainHost{HostID: "h1", Drain: true, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)},
	}
}

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range sampleCommands() {
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("encode %v: %v", c.CommandType(), err)
		}
		got, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("decode %v: %v", c.CommandType(), err)
		}
		again, _ := EncodeCommand(got)
		if !bytes.Equal(b, again) {
			t.Fatalf("%v: re-encoding the decoded command changed its bytes", c.CommandType())
		}
	}
}

// frame builds a frame by hand, so tests can forge types and payloads.
func frame(typ uint64, payload []byte) []byte {
	b := []byte{commandMagic, CommandEncodingVersion}
	b = binary.AppendUvarint(b, typ)
	b = binary.AppendUvarint(b, uint64(len(payload)))
	b = append(b, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// EncodeSubmitJobs splices pre-encoded items; the frame must be the one
// EncodeCommand makes of the same batch.
func TestEncodeSubmitJobsMatchesEncodeCommand(t *testing.T) {
	var c *SubmitJobs
	for _, sc := range sampleCommands() {
		if s, ok := sc.(*SubmitJobs); ok {
			c = s
		}
	}
	c.Items = append(c.Items, c.Items[0])
	var items [][]byte
	for _, it := range c.Items {
		b, err := json.Marshal(it)
		if err != nil {
			t.Fatal(err)
		}
		items = append(items, b)
	}
	want, err := EncodeCommand(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := EncodeSubmitJobs(items); !bytes.Equal(got, want) {
		t.Fatalf("EncodeSubmitJobs:\n%q\nEncodeCommand:\n%q", got, want)
	}
}

func TestDecodeCommandRefuses(t *testing.T) {
	good, _ := EncodeCommand(sampleCommands()[0])
	flipped := bytes.Clone(good)
	flipped[len(flipped)/2] ^= 0x01
	badVersion := bytes.Clone(good)
	badVersion[1] = 9
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrCorruptCommand},
		{"bad magic", append([]byte{0}, good[1:]...), ErrCorruptCommand},
		{"future encoding version", badVersion, ErrCorruptCommand},
		{"flipped bit", flipped, ErrCorruptCommand},
		{"truncated", good[:len(good)-1], ErrCorruptCommand},
		{"unknown type", frame(999, []byte(`{}`)), ErrUnknownCommand},
		{"type zero", frame(0, []byte(`{}`)), ErrUnknownCommand},
		{"unknown field", frame(uint64(CmdPutModel), []byte(`{"model":{"name":"a"},"extra":1}`)), ErrCorruptCommand},
		{"trailing data", frame(uint64(CmdPutModel), []byte(`{} {}`)), ErrCorruptCommand},
		{"not json", frame(uint64(CmdPlaceJob), []byte(`\x00`)), ErrCorruptCommand},
	}
	for _, tc := range cases {
		if _, err := DecodeCommand(tc.in); !errors.Is(err, tc.want) {
			t.Errorf("%s: DecodeCommand error = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestCommandTypesAreStable(t *testing.T) {
	// These numbers are in every Raft log ever written; changing one breaks
	// replay. Append new types, never renumber.
	want := map[CommandType]uint64{CmdPutModel: 1, CmdSubmitJob: 2, CmdRegisterHost: 3, CmdPlaceJob: 4, CmdReportJob: 5,
		CmdSubmitJobs: 6, CmdCancelJob: 7, CmdRetryJob: 8, CmdMarkHostDown: 9, CmdTimeoutJobs: 10, CmdWebhookResults: 11,
		CmdSetCoordinator: 12, CmdPlaceJobs: 13, CmdDrainHost: 14}
	for c, n := range want {
		if uint64(c) != n {
			t.Errorf("%v = %d, want %d", c, uint64(c), n)
		}
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range sampleCommands() {
		b, _ := EncodeCommand(c)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add(frame(999, []byte(`{}`)))
	f.Add(frame(uint64(CmdSubmitJob), []byte(`{"job":{"id":1}}`)))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			if !errors.Is(err, ErrCorruptCommand) && !errors.Is(err, ErrUnknownCommand) {
				t.Fatalf("DecodeCommand error %v is neither corrupt nor unknown", err)
			}
			return
		}
		// Anything accepted must survive a round trip.
		enc, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("re-encode accepted command: %v", err)
		}
		if _, err := DecodeCommand(enc); err != nil {
			t.Fatalf("decode of re-encoded command: %v", err)
		}
	})
}
