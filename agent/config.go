package agent

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/hearth-gpu/hearth/agent/gpu"
	"github.com/hearth-gpu/hearth/agent/runner"
	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/gossip"
	"github.com/hearth-gpu/hearth/proto"
)

// Config holds what an agent needs. Build one with DefaultConfig.
type Config struct {
	// HostID names this host to the coordinator; stable across restarts.
	HostID string
	// Addr is where peers and operators reach this agent (its blob server
	// and metrics, default :7710); reported at registration.
	Addr string
	// CoordinatorURL is the API of any coordinator node, or several,
	// comma-separated: the agent moves to the next when one is unreachable.
	CoordinatorURL string
	// Token is the bearer token (agent scope) when the coordinators
	// require auth.
	Token string
	// DataDir holds the blob cache (cache/), job outputs (results/) and
	// per-job scratch (work/).
	DataDir string
	// HTTPAddr is where the agent's HTTP server (/metrics, /healthz)
	// listens; empty means no server. Addr defaults to it.
	HTTPAddr string
	// OriginDir is the local origin: catalog entries' origin keys are paths
	// below it. S3, when set, is the origin instead.
	OriginDir string
	S3        *cachefs.S3Config
	// Results, when set, is the bucket job outputs are uploaded to, each
	// with a presigned GET URL valid for ResultsURLExpiry (default and
	// most: 7 days, S3's limit). Without it outputs stay under
	// DataDir/results with file:// URLs.
	Results          *cachefs.S3Config
	ResultsURLExpiry time.Duration
	// PeerToken is the secret every host of the pool shares: a peer must
	// present it to fetch blobs from this host (empty: serve none).
	// PeerRateBytesPerSec caps the upload rate to each requesting peer
	// (0: unlimited).
	PeerToken           string
	PeerRateBytesPerSec int64
	// PeerSettle and PeerStall tune downloads shared with peers (see
	// cachefs.Config; zero: its defaults, 500 ms and 5 s).
	PeerSettle time.Duration
	PeerStall  time.Duration
	// Gossip, when Gossip.BindAddr is set, joins this host to the pool of
	// agents and coordinators: it finds peers there, publishes what its
	// cache holds, and fetches models from peers (which needs PeerToken)
	// before the origin. NodeName, Role, APIAddr, BlobAddr and Labels are
	// filled in by the agent.
	Gossip *gossip.Config
	// Origin, when set, is the origin itself, instead of one built from
	// OriginDir or S3 (for programs that embed an agent).
	Origin cachefs.Origin

	// CacheMaxBytes bounds the disk cache; 0 means unlimited.
	CacheMaxBytes int64
	// RAMMaxBytes is the RAM tier's budget: models jobs use are held
	// resident (mlocked) in host memory up to it. 0 means no RAM tier.
	RAMMaxBytes int64
	// ScrubInterval is how often every cached blob is rehashed to catch
	// corruption on disk (0: never); ScrubBytesPerSec bounds its reading.
	ScrubInterval    time.Duration
	ScrubBytesPerSec int64
	// MeasureBandwidth times a read of a file written to the cache disk at
	// start and reports it as the disk tier's bandwidth, unless Bandwidth
	// sets that tier.
	MeasureBandwidth bool

	// SimGPUs is the inventory used when NVML is unavailable.
	SimGPUs []gpu.SimGPU
	// SlotBytes is the size of one VRAM slot; ReserveBytes is held back on
	// every GPU. MaxSlotsPerGPU, if set, caps slots per GPU.
	SlotBytes      uint64
	ReserveBytes   uint64
	MaxSlotsPerGPU int

	// Runner is what runs workflow and worker jobs in each slot:
	// RunnerWorker (the default), a long-lived process speaking the worker
	// protocol, or RunnerComfyUI, one ComfyUI server per slot. Exec jobs
	// run on their own either way.
	Runner string
	// WorkerCommand is the argv of the long-lived worker started per slot
	// for workflow and worker jobs; WorkerEnv is added to its environment.
	// The default runs this binary's reference worker.
	WorkerCommand []string
	WorkerEnv     []string
	// ComfyUI configures the servers of the comfyui runner.
	ComfyUI ComfyUIConfig
	// GPUTempMaxC is the temperature above which a GPU's host reports
	// itself degraded and takes no new placements, until every GPU is back
	// below it by GPUTempHysteresisC (defaults 85 °C and 5 °C; negative: no
	// limit). Simulated GPUs read 0 °C.
	GPUTempMaxC        int
	GPUTempHysteresisC int
	// Devices, when set, is the GPU source instead of NVML or the simulated
	// inventory (for programs that embed an agent, and tests).
	Devices gpu.Devices

	// HeartbeatInterval is how often live state is sent (default 2 s).
	HeartbeatInterval time.Duration
	// PollWait is the long-poll duration for assignments (default 30 s).
	PollWait time.Duration
	// ShutdownTimeout is how long Shutdown lets running jobs finish before
	// it cancels them (default 5 min; the coordinator requeues those).
	ShutdownTimeout time.Duration
	// Bandwidth is bytes/s per tier reported to the scheduler; missing tiers
	// use the coordinator's defaults.
	Bandwidth map[proto.Tier]float64
	Labels    map[string]string

	Logger *slog.Logger
}

// Runners, as Config.Runner names them.
const (
	RunnerWorker  = "worker"
	RunnerComfyUI = "comfyui"
)

// ComfyUIConfig configures the comfyui runner's servers: the agent starts
// and supervises one per slot with Command, or attaches to the running
// servers at URLs, one per slot in (GPU, slot) order.
type ComfyUIConfig struct {
	// Command starts a server (default runner.DefaultComfyUICommand, run in
	// Dir, a ComfyUI checkout). The placeholders {host}, {port}, {gpu},
	// {extra_model_paths} and {output_dir} are filled in per slot: the
	// model folders are the host's verified cache, as named views.
	Command []string
	Dir     string
	Env     []string
	URLs    []string
	// StartTimeout bounds a server's start until it answers (default
	// 120 s: ComfyUI imports torch and its custom nodes first).
	StartTimeout time.Duration
}

// DefaultConfig returns a config for a dev host on the default ports.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		HostID:             host,
		Addr:               "127.0.0.1:7710",
		CoordinatorURL:     "http://127.0.0.1:7700",
		Runner:             RunnerWorker,
		SlotBytes:          24 << 30,
		ReserveBytes:       2 << 30,
		GPUTempMaxC:        85,
		GPUTempHysteresisC: 5,
		HeartbeatInterval:  2 * time.Second,
		PollWait:           30 * time.Second,
		ShutdownTimeout:    5 * time.Minute,
	}
}

// ValidateConfig reports every problem with c.
func ValidateConfig(c *Config) error {
	var errs []error
	if c.HostID == "" {
		errs = append(errs, errors.New("agent: config: host_id must be set"))
	} else if err := proto.ValidateModelName(c.HostID); err != nil || len(c.HostID) > 128 {
		errs = append(errs, fmt.Errorf("agent: config: host_id %q must be a short name without '/' tricks", c.HostID))
	}
	if c.CoordinatorURL == "" {
		errs = append(errs, errors.New("agent: config: coordinator_url must be set"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("agent: config: data_dir must be set"))
	}
	if c.OriginDir == "" && c.S3 == nil && c.Origin == nil {
		errs = append(errs, errors.New("agent: config: set origin_dir, or an S3 origin"))
	}
	if c.ResultsURLExpiry < 0 || c.ResultsURLExpiry > maxPresignExpiry {
		errs = append(errs, fmt.Errorf("agent: config: results_url_expiry %s must be between 0 and %s (S3's limit for presigned URLs)", c.ResultsURLExpiry, maxPresignExpiry))
	}
	if c.CacheMaxBytes < 0 || c.RAMMaxBytes < 0 || c.ScrubBytesPerSec < 0 || c.ScrubInterval < 0 {
		errs = append(errs, errors.New("agent: config: cache_max, ram_max, scrub_interval and scrub_rate must not be negative"))
	}
	if c.SlotBytes == 0 {
		errs = append(errs, errors.New("agent: config: slot_bytes must be positive"))
	}
	switch c.Runner {
	case "", RunnerWorker:
	case RunnerComfyUI:
		for _, u := range c.ComfyUI.URLs {
			if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
				errs = append(errs, fmt.Errorf("agent: config: comfyui_url %q must be http(s)://host:port", u))
			}
		}
	default:
		errs = append(errs, fmt.Errorf("agent: config: runner %q must be %q or %q", c.Runner, RunnerWorker, RunnerComfyUI))
	}
	if c.ShutdownTimeout < 0 {
		errs = append(errs, errors.New("agent: config: shutdown_timeout must not be negative"))
	}
	if c.GPUTempHysteresisC < 0 {
		errs = append(errs, errors.New("agent: config: gpu_temp_hysteresis must not be negative"))
	}
	return errors.Join(errs...)
}

func (c *Config) fillDefaults() error {
	d := DefaultConfig()
	c.SlotBytes = cmp.Or(c.SlotBytes, d.SlotBytes)
	c.Runner = cmp.Or(c.Runner, d.Runner)
	if c.Runner == RunnerComfyUI && len(c.ComfyUI.Command) == 0 && len(c.ComfyUI.URLs) == 0 {
		c.ComfyUI.Command = runner.DefaultComfyUICommand
	}
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, d.HeartbeatInterval)
	c.PollWait = cmp.Or(c.PollWait, d.PollWait)
	c.ShutdownTimeout = cmp.Or(c.ShutdownTimeout, d.ShutdownTimeout)
	c.ResultsURLExpiry = cmp.Or(c.ResultsURLExpiry, maxPresignExpiry)
	if c.Addr == "" && c.HTTPAddr != "" {
		c.Addr = c.HTTPAddr
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	if len(c.WorkerCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("agent: find own executable for the reference worker: %w", err)
		}
		c.WorkerCommand = []string{exe, "refworker"}
	}
	return nil
}

func (c *Config) cacheDir() string   { return filepath.Join(c.DataDir, "cache") }
func (c *Config) resultsDir() string { return filepath.Join(c.DataDir, "results") }
func (c *Config) workDir() string    { return filepath.Join(c.DataDir, "work") }
func (c *Config) extraModelPathsFile() string {
	return filepath.Join(c.DataDir, "extra_model_paths.yaml")
}
func (c *Config) viewsDir() string { return filepath.Join(c.DataDir, "models") }

// maxPresignExpiry is the longest an S3 presigned URL may stay valid.
const maxPresignExpiry = 7 * 24 * time.Hour
