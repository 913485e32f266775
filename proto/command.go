package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// CommandType numbers a Raft command. Values are append-only: never reuse or
// renumber one (see the package comment).
type CommandType uint64

const (
	CmdPutModel       CommandType = 1  // add or replace a catalog entry
	CmdSubmitJob      CommandType = 2  // accept a job
	CmdRegisterHost   CommandType = 3  // record a host's registration
	CmdPlaceJob       CommandType = 4  // record the scheduler's placement of a job
	CmdReportJob      CommandType = 5  // record an agent's report of a job transition
	CmdSubmitJobs     CommandType = 6  // accept a batch of jobs (group commit)
	CmdCancelJob      CommandType = 7  // cancel a job
	CmdRetryJob       CommandType = 8  // requeue a finished job
	CmdMarkHostDown   CommandType = 9  // mark a host down and requeue its jobs
	CmdTimeoutJobs    CommandType = 10 // end jobs that outlived their queue TTL or run timeout
	CmdWebhookResults CommandType = 11 // record webhook delivery attempts
	CmdSetCoordinator CommandType = 12 // record a coordinator node's addresses
	CmdPlaceJobs      CommandType = 13 // record a scheduling pass's placements
	CmdDrainHost      CommandType = 14 // set or clear an operator's drain of a host
)

// commandTypes maps each type to its name and a constructor for its body.
var commandTypes = map[CommandType]struct {
	name string
	new  func() Command
}{
	CmdPutModel:       {"put-model", func() Command { return &PutModel{} }},
	CmdSubmitJob:      {"submit-job", func() Command { return &SubmitJob{} }},
	CmdRegisterHost:   {"register-host", func() Command { return &RegisterHost{} }},
	CmdPlaceJob:       {"place-job", func() Command { return &PlaceJob{} }},
	CmdReportJob:      {"report-job", func() Command { return &ReportJob{} }},
	CmdSubmitJobs:     {"submit-jobs", func() Command { return &SubmitJobs{} }},
	CmdCancelJob:      {"cancel-job", func() Command { return &CancelJob{} }},
	CmdRetryJob:       {"retry-job", func() Command { return &RetryJob{} }},
	CmdMarkHostDown:   {"host-down", func() Command { return &MarkHostDown{} }},
	CmdTimeoutJobs:    {"timeout-jobs", func() Command { return &TimeoutJobs{} }},
	CmdWebhookResults: {"webhook-results", func() Command { return &WebhookResults{} }},
	CmdSetCoordinator: {"set-coordinator", func() Command { return &SetCoordinator{} }},
	CmdPlaceJobs:      {"place-jobs", func() Command { return &PlaceJobs{} }},
	CmdDrainHost:      {"drain-host", func() Command { return &DrainHost{} }},
}

// maxCommandType is the highest type this build knows.
const maxCommandType = CmdDrainHost

func (t CommandType) String() string {
	if ct, ok := commandTypes[t]; ok {
		return ct.name
	}
	return fmt.Sprintf("command(%d)", uint64(t))
}

// CommandEncodingVersion is the framing version written in byte 1.
const CommandEncodingVersion = 1

const commandMagic = 0x68

// MaxCommandPayload bounds a decoded payload; the HTTP layer's body limit is
// far below it, so anything larger is corruption.
const MaxCommandPayload = 256 << 20

var (
	// ErrUnknownCommand is returned for a command type this build does not know.
	ErrUnknownCommand = errors.New("proto: unknown command type")
	// ErrCorruptCommand is returned for framing, checksum or payload errors.
	ErrCorruptCommand = errors.New("proto: corrupt command")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Command is the body of one Raft entry.
type Command interface {
	CommandType() CommandType
}

// PutModel adds or replaces a catalog entry.
type PutModel struct {
	Model Model `json:"model"`
}

// SubmitJob accepts a job. The leader fills in the id, the resolved models
// and the submit time before proposing, so applying it is deterministic.
type SubmitJob struct {
	Job Job `json:"job"`
}

// RegisterHost records a host's registration.
type RegisterHost struct {
	Host Host `json:"host"`
}

// PlaceJob records a placement. The FSM sets the placement's epoch to the
// entry's log index, so every attempt has a distinct, ordered epoch.
type PlaceJob struct {
	JobID     string    `json:"job_id"`
	Placement Placement `json:"placement"`
}

// ReportJob records an agent's report of a transition.
type ReportJob struct {
	Report JobReport `json:"report"`
	// Backoff and BackoffMax shape the delay before a retryable failure is
	// placed again, as for MarkHostDown; the leader fills them in.
	Backoff    time.Duration `json:"backoff,omitempty"`
	BackoffMax time.Duration `json:"backoff_max,omitempty"`
}

// SubmitJobs accepts a batch of jobs in one entry: the leader gathers
// concurrent submissions so that acceptance costs one log write per batch,
// not per job. Each item succeeds or fails on its own.
type SubmitJobs struct {
	Items []SubmitItem `json:"items"`
}

// SubmitItem is one job of a batch. RequestHash identifies the request body
// for its Idempotency-Key (Job.IdempotencyKey): a second submission with the
// same key and hash is answered with the first job, with the same key and
// another hash it is refused.
type SubmitItem struct {
	Job         Job    `json:"job"`
	RequestHash string `json:"request_hash,omitempty"`
}

// CancelJob ends a job that has not finished; its agent, if any, stops the
// run when the assignment disappears.
type CancelJob struct {
	JobID  string    `json:"job_id"`
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

// RetryJob puts a failed, cancelled or timed-out job back in the queue
// with a fresh attempt budget.
type RetryJob struct {
	JobID string    `json:"job_id"`
	Time  time.Time `json:"time"`
}

// MarkHostDown marks a host down. Its placed and running jobs are requeued
// with a backoff (Backoff·2^(attempts-1), at most BackoffMax), or fail once
// they have used their attempts. A later registration brings it back.
type MarkHostDown struct {
	HostID     string        `json:"host_id"`
	Reason     string        `json:"reason"`
	Time       time.Time     `json:"time"`
	Backoff    time.Duration `json:"backoff"`
	BackoffMax time.Duration `json:"backoff_max"`
}

// TimeoutJobs ends jobs that waited past their queue TTL (Epoch 0: the job
// must still be queued) or ran past their timeout (Epoch: the attempt that
// overran; a newer attempt is left alone).
type TimeoutJobs struct {
	Items []TimeoutItem `json:"items"`
	Time  time.Time     `json:"time"`
}

// TimeoutItem is one job to time out.
type TimeoutItem struct {
	JobID  string `json:"job_id"`
	Epoch  uint64 `json:"epoch,omitempty"`
	Reason string `json:"reason"`
}

// WebhookResults records delivery attempts made by the leader.
type WebhookResults struct {
	Results []WebhookResult `json:"results"`
}

// WebhookResult is one delivery attempt. Attempt is the delivery's attempt
// count before this one, so a result that raced with another leader's is
// ignored rather than counted twice.
type WebhookResult struct {
	JobID      string    `json:"job_id"`
	DeliveryID string    `json:"delivery_id"`
	Attempt    int       `json:"attempt"`
	Delivered  bool      `json:"delivered"`
	GiveUp     bool      `json:"give_up,omitempty"`
	Status     int       `json:"status,omitempty"`
	Error      string    `json:"error,omitempty"`
	NextAt     time.Time `json:"next_at"`
	Time       time.Time `json:"time"`
}

// Coordinator is one coordinator node's addresses, so followers know where
// to forward writes for whichever node leads.
type Coordinator struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
	RaftAddr string `json:"raft_addr"`
}

// SetCoordinator records a coordinator node's addresses.
type SetCoordinator struct {
	Coordinator Coordinator `json:"coordinator"`
}

// PlaceJobs records the placements of one scheduling pass; each is checked
// like a PlaceJob and refused or kept on its own.
type PlaceJobs struct {
	Items []PlaceJob `json:"items"`
}

// DrainHost sets (Drain) or clears an operator's drain of a host: a
// draining host takes no new placements, and its placed and running jobs
// go on. The mark is part of the host's record, so it outlasts the agent's
// restarts and re-registrations until it is cleared.
type DrainHost struct {
	HostID string    `json:"host_id"`
	Drain  bool      `json:"drain"`
	Time   time.Time `json:"time"`
}

func (*PutModel) CommandType() CommandType       { return CmdPutModel }
func (*SubmitJobs) CommandType() CommandType     { return CmdSubmitJobs }
func (*CancelJob) CommandType() CommandType      { return CmdCancelJob }
func (*RetryJob) CommandType() CommandType       { return CmdRetryJob }
func (*MarkHostDown) CommandType() CommandType   { return CmdMarkHostDown }
func (*TimeoutJobs) CommandType() CommandType    { return CmdTimeoutJobs }
func (*WebhookResults) CommandType() CommandType { return CmdWebhookResults }
func (*SetCoordinator) CommandType() CommandType { return CmdSetCoordinator }
func (*PlaceJobs) CommandType() CommandType      { return CmdPlaceJobs }
func (*SubmitJob) CommandType() CommandType      { return CmdSubmitJob }
func (*RegisterHost) CommandType() CommandType   { return CmdRegisterHost }
func (*PlaceJob) CommandType() CommandType       { return CmdPlaceJob }
func (*ReportJob) CommandType() CommandType      { return CmdReportJob }
func (*DrainHost) CommandType() CommandType      { return CmdDrainHost }

// newCommand returns an empty body for t, or nil if t is unknown.
func newCommand(t CommandType) Command {
	if ct, ok := commandTypes[t]; ok {
		return ct.new()
	}
	return nil
}

// EncodeCommand frames c for the Raft log.
func EncodeCommand(c Command) ([]byte, error) {
	if newCommand(c.CommandType()) == nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownCommand, c.CommandType())
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("proto: encode %v: %w", c.CommandType(), err)
	}
	return frameCommand(c.CommandType(), payload), nil
}

// EncodeSubmitJobs frames a SubmitJobs command from items that are each
// already JSON-encoded SubmitItems. The leader's HTTP handlers encode their
// own item concurrently, so the one goroutine that gathers a batch only
// concatenates bytes.
func EncodeSubmitJobs(items [][]byte) []byte {
	n := len(`{"items":[]}`) + len(items)
	for _, it := range items {
		n += len(it)
	}
	payload := make([]byte, 0, n)
	payload = append(payload, `{"items":[`...)
	for i, it := range items {
		if i > 0 {
			payload = append(payload, ',')
		}
		payload = append(payload, it...)
	}
	payload = append(payload, "]}"...)
	return frameCommand(CmdSubmitJobs, payload)
}

func frameCommand(t CommandType, payload []byte) []byte {
	buf := make([]byte, 0, len(payload)+2+2*binary.MaxVarintLen64+4)
	buf = append(buf, commandMagic, CommandEncodingVersion)
	buf = binary.AppendUvarint(buf, uint64(t))
	buf = binary.AppendUvarint(buf, uint64(len(payload)))
	buf = append(buf, payload...)
	return binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
}

// DecodeCommand parses one framed command. It never panics on bad input:
// every malformed frame is ErrCorruptCommand, every unknown type
// ErrUnknownCommand, both wrapped with what was wrong.
func DecodeCommand(b []byte) (Command, error) {
	if len(b) < 2+1+1+4 {
		return nil, fmt.Errorf("%w: %d bytes is too short for a frame", ErrCorruptCommand, len(b))
	}
	if b[0] != commandMagic {
		return nil, fmt.Errorf("%w: bad magic byte 0x%02x", ErrCorruptCommand, b[0])
	}
	if b[1] != CommandEncodingVersion {
		return nil, fmt.Errorf("%w: encoding version %d, this build reads %d", ErrCorruptCommand, b[1], CommandEncodingVersion)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("%w: checksum 0x%08x, frame says 0x%08x", ErrCorruptCommand, got, sum)
	}
	rest := body[2:]
	t, n := binary.Uvarint(rest)
	if n <= 0 {
		return nil, fmt.Errorf("%w: bad command type varint", ErrCorruptCommand)
	}
	rest = rest[n:]
	size, n := binary.Uvarint(rest)
	if n <= 0 {
		return nil, fmt.Errorf("%w: bad payload length varint", ErrCorruptCommand)
	}
	rest = rest[n:]
	if size > MaxCommandPayload || size != uint64(len(rest)) {
		return nil, fmt.Errorf("%w: payload length %d, frame holds %d", ErrCorruptCommand, size, len(rest))
	}
	c := newCommand(CommandType(t))
	if c == nil {
		return nil, fmt.Errorf("%w: %d (this build knows 1..%d; upgrade before replaying this log)", ErrUnknownCommand, t, uint64(maxCommandType))
	}
	dec := json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%w: %v payload: %v", ErrCorruptCommand, CommandType(t), err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: %v payload has trailing data", ErrCorruptCommand, CommandType(t))
	}
	return c, nil
}
