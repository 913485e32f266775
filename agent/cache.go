package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hearth-gpu/hearth/cachefs"
	"github.com/hearth-gpu/hearth/proto"
	"golang.org/x/sys/unix"
)

// openCache builds the host's model cache from the config: the disk tier,
// the RAM tier on top of it, the named views, the origin it fills from and
// the store job outputs go to. On error nothing is left open.
func (a *Agent) openCache(ctx context.Context) (err error) {
	cfg := a.cfg
	if a.cache, err = cachefs.Open(cachefs.Config{Dir: cfg.cacheDir(), MaxBytes: cfg.CacheMaxBytes, Logger: a.log, Metrics: a.cacheMetrics,
		PeerSettle: cfg.PeerSettle, PeerStall: cfg.PeerStall}); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			a.closeCache()
		}
	}()
	if a.views, err = cachefs.NewViews(cfg.viewsDir(), a.cache); err != nil {
		return err
	}
	if err := os.WriteFile(cfg.extraModelPathsFile(), a.views.ExtraModelPathsYAML(), 0o644); err != nil {
		return fmt.Errorf("agent: write extra_model_paths.yaml: %w", err)
	}
	if cfg.RAMMaxBytes > 0 {
		if a.ram, err = cachefs.NewRAMTier(a.cache, cachefs.RAMConfig{MaxBytes: cfg.RAMMaxBytes, Logger: a.log, Metrics: a.cacheMetrics}); err != nil {
			return err
		}
	}
	if cfg.Origin != nil {
		a.origin = cfg.Origin
	} else if cfg.S3 != nil {
		s3 := *cfg.S3
		s3.Logger = a.log
		o, err := cachefs.NewS3Origin(s3)
		if err != nil {
			return fmt.Errorf("agent: S3 origin: %w", err)
		}
		a.origin = o
	} else if a.origin, err = cachefs.NewDirOrigin(cfg.OriginDir); err != nil {
		return err
	}
	a.results = localResults{dir: cfg.resultsDir()}
	if cfg.Results != nil {
		rc := *cfg.Results
		rc.Logger = a.log
		bucket, err := cachefs.NewS3Origin(rc)
		if err != nil {
			return fmt.Errorf("agent: results bucket: %w", err)
		}
		if err := bucket.EnsureBucket(ctx); err != nil {
			return fmt.Errorf("agent: results bucket: %w", err)
		}
		a.results = bucketResults{bucket: bucket, expiry: cfg.ResultsURLExpiry}
	}
	a.log.Info("model cache", "dir", cfg.cacheDir(), "disk_budget", cfg.CacheMaxBytes, "ram_budget", cfg.RAMMaxBytes,
		"origin", a.origin.String(), "results", a.results.String(), "views", cfg.viewsDir())
	return nil
}

func (a *Agent) closeCache() error {
	var errs []error
	if a.ram != nil {
		errs = append(errs, a.ram.Close())
	}
	if a.cache != nil {
		errs = append(errs, a.cache.Close())
	}
	return errors.Join(errs...)
}

// promote brings a model a job just used into the RAM tier in the
// background, so the next job that loads it reads host memory, not the disk.
// The RAM tier shares concurrent promotions of one blob and makes room by
// demoting its least recently used blobs.
func (a *Agent) promote(m proto.ModelRef) {
	if a.ram == nil || a.ram.Has(m.Digest) {
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.ram.Promote(a.ctx, m.Digest); err != nil && a.ctx.Err() == nil {
			a.log.Warn("model stays on disk: promotion to RAM failed", "model", m.Name, "err", err)
			return
		}
		a.published(m.Digest, proto.TierRAM)
		a.poke() // the scheduler should see the new tier
	}()
}

// cacheInventory is the cache part of a heartbeat: every blob, in the
// fastest tier that holds it outside a worker.
func (a *Agent) cacheInventory() []proto.CachedBlob {
	list := a.cache.List()
	out := make([]proto.CachedBlob, 0, len(list))
	for _, bi := range list {
		tier := proto.TierDisk
		if a.ram != nil && a.ram.Has(bi.Digest) {
			tier = proto.TierRAM
		}
		out = append(out, proto.CachedBlob{Digest: bi.Digest, Size: bi.Size, Tier: tier})
	}
	return out
}

// scrubLoop rehashes the disk tier every ScrubInterval; a corrupt blob is
// dropped, and the next job that needs it fetches it again.
func (a *Agent) scrubLoop() {
	opts := cachefs.ScrubOptions{BytesPerSecond: a.cfg.ScrubBytesPerSec}
	a.cache.ScrubEvery(a.ctx, a.cfg.ScrubInterval, opts)
}

// diskProbeBytes is the size of the file timed at start: large enough to
// outlast the disk's cache and the syscall overhead, small enough to cost
// well under a second on NVMe.
const diskProbeBytes = 128 << 20

// measureDiskBandwidth writes a file into the cache directory, syncs it,
// drops it from the page cache, and times reading it back: the rate at
// which a model on this disk reaches a worker.
func measureDiskBandwidth(dir string) (float64, error) {
	f, err := os.CreateTemp(dir, ".bandwidth-probe-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4<<20)
	if _, err := rand.Read(buf); err != nil { // incompressible, in case the disk compresses
		return 0, err
	}
	for written := 0; written < diskProbeBytes; written += len(buf) {
		if _, err := f.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	// Clean pages can be dropped: the read below then comes from the disk.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return 0, fmt.Errorf("drop the probe from the page cache: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	start := time.Now()
	n, err := io.CopyBuffer(io.Discard, f, buf)
	if err != nil {
		return 0, err
	}
	return float64(n) / max(time.Since(start).Seconds(), 1e-6), nil
}

// tierBandwidths is what the host reports to the scheduler: the configured
// rates, with the disk tier measured when asked and not configured.
func (a *Agent) tierBandwidths() map[proto.Tier]float64 {
	out := make(map[proto.Tier]float64, len(a.cfg.Bandwidth)+1)
	for t, bw := range a.cfg.Bandwidth {
		out[t] = bw
	}
	if _, set := out[proto.TierDisk]; !set && a.cfg.MeasureBandwidth {
		bw, err := measureDiskBandwidth(a.cfg.cacheDir())
		if err != nil {
			a.log.Warn("cannot measure the cache disk's read rate; the coordinator's default applies", "err", err)
		} else {
			a.log.Info("measured the cache disk's read rate", "mb_per_s", int(bw/1e6))
			out[proto.TierDisk] = bw
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
