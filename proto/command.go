package proto

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
)

// CommandType numbers a Raft command. Values are append-only: never reuse or
// renumber one (see the package comment).
type CommandType uint64

const (
	CmdPutModel     CommandType = 1 // add or replace a catalog entry
	CmdSubmitJob    CommandType = 2 // accept a job
	CmdRegisterHost CommandType = 3 // record a host's registration
	CmdPlaceJob     CommandType = 4 // record the scheduler's placement of a job
	CmdReportJob    CommandType = 5 // record an agent's report of a job transition
)

func (t CommandType) String() string {
	switch t {
	case CmdPutModel:
		return "put-model"
	case CmdSubmitJob:
		return "submit-job"
	case CmdRegisterHost:
		return "register-host"
	case CmdPlaceJob:
		return "place-job"
	case CmdReportJob:
		return "report-job"
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
}

func (*PutModel) CommandType() CommandType     { return CmdPutModel }
func (*SubmitJob) CommandType() CommandType    { return CmdSubmitJob }
func (*RegisterHost) CommandType() CommandType { return CmdRegisterHost }
func (*PlaceJob) CommandType() CommandType     { return CmdPlaceJob }
func (*ReportJob) CommandType() CommandType    { return CmdReportJob }

// newCommand returns an empty body for t, or nil if t is unknown.
func newCommand(t CommandType) Command {
	switch t {
	case CmdPutModel:
		return &PutModel{}
	case CmdSubmitJob:
		return &SubmitJob{}
	case CmdRegisterHost:
		return &RegisterHost{}
	case CmdPlaceJob:
		return &PlaceJob{}
	case CmdReportJob:
		return &ReportJob{}
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
	buf := make([]byte, 0, len(payload)+2+2*binary.MaxVarintLen64+4)
	buf = append(buf, commandMagic, CommandEncodingVersion)
	buf = binary.AppendUvarint(buf, uint64(c.CommandType()))
	buf = binary.AppendUvarint(buf, uint64(len(payload)))
	buf = append(buf, payload...)
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(buf, castagnoli))
	return buf, nil
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
		return nil, fmt.Errorf("%w: %d (this build knows 1..%d; upgrade before replaying this log)", ErrUnknownCommand, t, uint64(CmdReportJob))
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
