// Package devcluster runs a whole hearth cluster in one process: a
// single-voter coordinator with Raft on disk, one agent with a simulated GPU
// and a local origin directory seeded with the demo models. `hearth demo`,
// `hearth dev` and the end-to-end tests build on it.
package devcluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/coordinator"
	"github.com/hearth-gpu/hearth/examples"
	"github.com/hearth-gpu/hearth/proto"
)

// Options shape the cluster. Zero values give an ephemeral cluster on free
// loopback ports.
type Options struct {
	DataDir   string // required
	HTTPAddr  string // default 127.0.0.1:0
	RaftAddr  string // default 127.0.0.1:0
	HostID    string // default "host-1"
	SlotBytes uint64 // default 24 GiB
	Slots     int    // slots on the simulated GPU (default 2)
	// WorkerCommand and WorkerEnv override the agent's worker (tests re-exec
	// themselves as the reference worker).
	WorkerCommand []string
	WorkerEnv     []string
	// Coordinator, if set, edits the coordinator config before start.
	Coordinator func(*coordinator.Config)
	Logger      *slog.Logger
	// S3, when set, is the origin: the demo models are uploaded to its
	// bucket (once) and the agent fetches them from there. Results, when
	// set, is the bucket job outputs go to, with presigned URLs.
	S3      *cachefs.S3Config
	Results *cachefs.S3Config
	// Agent, if set, edits the agent config before start.
	Agent func(*agent.Config)
}

// Cluster is a running in-process cluster.
type Cluster struct {
	Coordinator *coordinator.Server
	Agent       *agent.Agent
	Client      *client.Client
	OriginDir   string
	opts        Options
}

// Start brings up the coordinator, seeds the catalog with the demo models
// (generating their files once) and starts the agent.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.DataDir == "" {
		return nil, fmt.Errorf("devcluster: DataDir must be set")
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = "127.0.0.1:0"
	}
	if o.RaftAddr == "" {
		o.RaftAddr = "127.0.0.1:0"
	}
	if o.HostID == "" {
		o.HostID = "host-1"
	}
	if o.SlotBytes == 0 {
		o.SlotBytes = 24 << 30
	}
	if o.Slots == 0 {
		o.Slots = 2
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	coord, err := StartCoordinator(ctx, filepath.Join(o.DataDir, "coordinator"), func(cc *coordinator.Config) {
		cc.HTTPAddr, cc.RaftAddr = o.HTTPAddr, o.RaftAddr
		cc.SchedulerInterval = 200 * time.Millisecond
		cc.Logger = o.Logger
		if o.Logger.Enabled(context.Background(), slog.LevelInfo) {
			cc.RaftLogLevel = "" // the library's default
		}
		if o.Coordinator != nil {
			o.Coordinator(cc)
		}
	})
	if err != nil {
		return nil, err
	}
	c := &Cluster{Coordinator: coord, Client: client.New(coord.URL(), nil), OriginDir: filepath.Join(o.DataDir, "origin"), opts: o}
	if err := SeedModels(ctx, c.Client, c.OriginDir, o.S3); err != nil {
		coord.Close()
		return nil, err
	}
	if err := c.StartAgent(ctx); err != nil {
		coord.Close()
		return nil, err
	}
	return c, nil
}

// StartCoordinator starts a single-voter coordinator on dataDir, on free
// loopback ports with fast Raft timers and Raft's log quiet (the first
// election always "times out"), and returns once it leads. edit, if set,
// adjusts the config first. The caller closes it.
func StartCoordinator(ctx context.Context, dataDir string, edit func(*coordinator.Config)) (*coordinator.Server, error) {
	cc := coordinator.DefaultConfig()
	cc.DataDir, cc.HTTPAddr, cc.RaftAddr = dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cc.Bootstrap, cc.RaftFastTimeouts, cc.RaftLogLevel = true, true, "error"
	cc.SchedulerInterval = 50 * time.Millisecond
	cc.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cc)
	}
	coord, err := coordinator.New(cc)
	if err != nil {
		return nil, err
	}
	if err := coord.WaitLeader(ctx); err != nil {
		coord.Close()
		return nil, err
	}
	return coord, nil
}

// StartAgent (re)starts the cluster's agent.
func (c *Cluster) StartAgent(ctx context.Context) error {
	o := c.opts
	ac := agent.DefaultConfig()
	ac.HostID = o.HostID
	ac.CoordinatorURL = c.Coordinator.URL()
	ac.DataDir = filepath.Join(o.DataDir, "agent")
	ac.OriginDir = c.OriginDir
	ac.SlotBytes = o.SlotBytes
	ac.ReserveBytes = 2 << 30
	ac.MaxSlotsPerGPU = o.Slots
	ac.SimGPUs = []gpu.SimGPU{{Name: "Simulated H200", MemoryBytes: 141 << 30}}
	ac.WorkerCommand, ac.WorkerEnv = o.WorkerCommand, o.WorkerEnv
	ac.HeartbeatInterval = 500 * time.Millisecond
	ac.Logger = o.Logger
	ac.S3, ac.Results = o.S3, o.Results
	if o.Agent != nil {
		o.Agent(&ac)
	}
	a, err := agent.New(ctx, ac)
	if err != nil {
		return err
	}
	c.Agent = a
	return nil
}

// Close stops the agent, then the coordinator.
func (c *Cluster) Close() error {
	var err error
	if c.Agent != nil {
		err = c.Agent.Close()
	}
	if cerr := c.Coordinator.Close(); err == nil {
		err = cerr
	}
	return err
}

// SeedModels writes the demo models into originDir (once; existing files
// are reused) and registers them in the catalog. With an S3 origin, the
// files are also uploaded to its bucket, keyed by their digests.
func SeedModels(ctx context.Context, api *client.Client, originDir string, s3 *cachefs.S3Config) error {
	var bucket *cachefs.S3Origin
	if s3 != nil {
		var err error
		if bucket, err = cachefs.NewS3Origin(*s3); err != nil {
			return fmt.Errorf("devcluster: %w", err)
		}
		if err := bucket.EnsureBucket(ctx); err != nil {
			return fmt.Errorf("devcluster: %w", err)
		}
	}
	for i, m := range examples.DemoModels {
		path := filepath.Join(originDir, filepath.FromSlash(m.Name))
		size, digest, err := ensureSafetensors(path, m.Size, uint64(i+1))
		if err != nil {
			return fmt.Errorf("devcluster: write demo model %s: %w", m.Name, err)
		}
		key := m.Name
		if bucket != nil {
			key = "blobs/sha256/" + digest.Hex()
			if _, err := bucket.PutFile(ctx, key, path, nil); err != nil {
				return fmt.Errorf("devcluster: upload demo model %s to %s: %w", m.Name, bucket, err)
			}
		}
		if _, err := api.PutModel(ctx, proto.Model{Name: m.Name, Digest: digest, Size: size, Origin: key}); err != nil {
			return fmt.Errorf("devcluster: register %s: %w", m.Name, err)
		}
	}
	return nil
}

// ensureSafetensors writes a safetensors file with one F16 tensor of
// tensorBytes deterministic pseudo-random bytes (seeded by seed), unless the
// file already exists, and returns its size and digest.
func ensureSafetensors(path string, tensorBytes int64, seed uint64) (int64, proto.Digest, error) {
	if _, err := os.Stat(path); err != nil {
		if err := writeSafetensors(path, tensorBytes, seed); err != nil {
			return 0, "", err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	return proto.DigestOf(f)
}

func writeSafetensors(path string, tensorBytes int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	header, err := json.Marshal(map[string]any{
		"__metadata__": map[string]string{"format": "pt", "generator": "hearth demo"},
		"weight":       map[string]any{"dtype": "F16", "shape": []int64{tensorBytes / 2}, "data_offsets": []int64{0, tensorBytes}},
	})
	if err != nil {
		return err
	}
	for len(header)%8 != 0 { // safetensors pads the header to 8 bytes
		header = append(header, ' ')
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(header)))
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, 1<<20)
	_, err = f.Write(append(lenBuf[:], header...))
	for left := tensorBytes; err == nil && left > 0; left -= int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
		}
		_, err = f.Write(buf[:min(left, int64(len(buf)))])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
