package hbbench

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// The simulated hosts look like the fleet the scheduler is built for: each
// has 8 GPUs of 4 slots of 20 GiB, one model resident in every slot, and a
// cache of Blobs models (a fifth of them in RAM) drawn from a catalog of
// Catalog models between 100 MB and 24 GB. A beat is what an agent sends:
// its slots, its cache in the mode's form, and 8 GPU readings. The JSON
// is written by hand from pieces made once (each catalog entry's
// {"digest","size","tier"} object, each host's fixed slots and GPU parts),
// because encoding 29 KB per beat with encoding/json would cost the load
// generator about as much CPU as the coordinator it measures;
// TestBeatBodyDecodes checks the result against proto.Heartbeat.

const (
	gpusPerHost  = 8
	slotsPerGPU  = 4
	slotBytes    = 20 << 30
	ramShare     = 5 // one cached blob in ramShare sits in RAM
	hostIDFormat = "hb-%06d"
)

// entry is one cached blob: a catalog index and its tier.
type entry struct {
	model uint16
	ram   bool
}

type catalog struct {
	digests []proto.Digest // sorted, so catalog order is digest order
	sizes   []int64
	blob    [2][][]byte // [0: disk, 1: ram][model] = its CachedBlob as JSON
}

func newCatalog(n int, rng *rand.Rand) *catalog {
	c := &catalog{digests: make([]proto.Digest, n), sizes: make([]int64, n)}
	for i := range n {
		sum := sha256.Sum256([]byte(fmt.Sprintf("hbbench model %d", i)))
		c.digests[i] = proto.DigestFromSum(sum[:])
	}
	slices.Sort(c.digests)
	for i := range n {
		c.sizes[i] = 100e6 + rng.Int64N(24e9-100e6)
		for t, tier := range []proto.Tier{proto.TierDisk, proto.TierRAM} {
			b, _ := json.Marshal(proto.CachedBlob{Digest: c.digests[i], Size: c.sizes[i], Tier: tier})
			c.blob[t] = append(c.blob[t], b)
		}
	}
	return c
}

func (c *catalog) cached(e entry) proto.CachedBlob {
	t := proto.TierDisk
	if e.ram {
		t = proto.TierRAM
	}
	return proto.CachedBlob{Digest: c.digests[e.model], Size: c.sizes[e.model], Tier: t}
}

func (c *catalog) appendBlob(buf []byte, e entry) []byte {
	t := 0
	if e.ram {
		t = 1
	}
	return append(buf, c.blob[t][e.model]...)
}

// simHost is one simulated agent.
type simHost struct {
	id         string
	registered atomic.Bool // the dispatcher beats registered hosts only
	inFlight   atomic.Bool // a beat is unanswered
	synced     atomic.Bool // a beat was answered (delta mode: inventory acknowledged)

	mu       sync.Mutex
	inv      []entry // sorted by model
	resident [gpusPerHost * slotsPerGPU]uint16
	// Delta mode: the agent's half of the exchange, as agent.inventorySync
	// keeps it (one beat in flight at a time, so no list of versions).
	version  uint64  // last version sent
	acked    uint64  // version the coordinator holds; 0 for none
	ackedInv []entry // inv at acked
}

type fleet struct {
	cfg   *Config
	mode  Mode
	cat   *catalog
	hosts []*simHost
	rng   *rand.Rand // used by the dispatcher alone
	// fixed is each host's "slots" array and "gpus" array, as JSON.
	slotsJSON, gpusJSON [][]byte
}

func newFleet(cfg *Config, mode Mode) *fleet {
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x4b))
	f := &fleet{cfg: cfg, mode: mode, cat: newCatalog(cfg.Catalog, rng), rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x4c))}
	start := uint64(time.Now().UnixMicro())
	for i := range cfg.Hosts {
		h := &simHost{id: fmt.Sprintf(hostIDFormat, i), version: start}
		for _, m := range rng.Perm(cfg.Catalog)[:cfg.Blobs] {
			h.inv = append(h.inv, entry{model: uint16(m), ram: rng.IntN(ramShare) == 0})
		}
		slices.SortFunc(h.inv, func(a, b entry) int { return int(a.model) - int(b.model) })
		for s := range h.resident {
			h.resident[s] = h.inv[rng.IntN(len(h.inv))].model
		}
		f.hosts = append(f.hosts, h)
		f.slotsJSON = append(f.slotsJSON, f.encodeSlots(h))
		f.gpusJSON = append(f.gpusJSON, encodeGPUs(rng))
	}
	return f
}

// registration is the host record its agent would register.
func (f *fleet) registration(i int) proto.Host {
	h := proto.Host{
		ID: f.hosts[i].id, Addr: fmt.Sprintf("10.%d.%d.%d:7710", i>>16&255, i>>8&255, i&255), DeviceKind: "simulated",
		Bandwidth: map[proto.Tier]float64{proto.TierRAM: 25e9, proto.TierDisk: 5e9, proto.TierPeer: 2e9, proto.TierOrigin: 1e9},
		Kinds:     []string{"workflow", "worker", "exec"},
	}
	for g := range gpusPerHost {
		h.GPUs = append(h.GPUs, proto.GPU{
			Index: g, UUID: fmt.Sprintf("GPU-%s-%d", h.ID, g), Name: "Simulated H100",
			MemoryTotal: slotsPerGPU*slotBytes + 2<<30, MemoryReserved: 2 << 30, SlotBytes: slotBytes, Slots: slotsPerGPU,
		})
	}
	return h
}

func (f *fleet) encodeSlots(h *simHost) []byte {
	var b []byte
	b = append(b, '[')
	for g := range gpusPerHost {
		for s := range slotsPerGPU {
			if g+s > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"gpu":`...)
			b = strconv.AppendInt(b, int64(g), 10)
			b = append(b, `,"slot":`...)
			b = strconv.AppendInt(b, int64(s), 10)
			b = append(b, `,"resident":["`...)
			b = append(b, f.cat.digests[h.resident[g*slotsPerGPU+s]]...)
			b = append(b, `"]}`...)
		}
	}
	return append(b, ']')
}

func encodeGPUs(rng *rand.Rand) []byte {
	states := make([]proto.GPUState, gpusPerHost)
	for g := range states {
		states[g] = proto.GPUState{Index: g, MemoryUsed: uint64(rng.Int64N(slotsPerGPU * slotBytes)), TemperatureC: 40 + rng.IntN(40), UtilizationPct: rng.IntN(101)}
	}
	b, _ := json.Marshal(states)
	return b
}

// change makes host i's agent evict one blob and fetch another, or move
// one between RAM and disk.
func (f *fleet) change(i int) {
	h := f.hosts[i]
	h.mu.Lock()
	defer h.mu.Unlock()
	k := f.rng.IntN(len(h.inv))
	if f.rng.IntN(2) == 0 || len(h.inv) == f.cfg.Catalog {
		h.inv[k].ram = !h.inv[k].ram
		return
	}
	h.inv = slices.Delete(h.inv, k, k+1)
	for {
		m := uint16(f.rng.IntN(f.cfg.Catalog))
		j, held := slices.BinarySearchFunc(h.inv, m, func(e entry, m uint16) int { return int(e.model) - int(m) })
		if !held {
			h.inv = slices.Insert(h.inv, j, entry{model: m})
			return
		}
	}
}

// beat is one heartbeat ready to send.
type beat struct {
	body    []byte
	version uint64 // the inventory version it carries; 0 for none
	inv     []entry
	hasInv  bool // carries an inventory part
	full    bool // a whole inventory
}

// buildBeat appends host i's heartbeat at now to buf.
func (f *fleet) buildBeat(i int, now time.Time, buf []byte) beat {
	h := f.hosts[i]
	h.mu.Lock()
	defer h.mu.Unlock()
	b := append(buf, `{"proto":`...)
	b = strconv.AppendInt(b, proto.Version, 10)
	b = append(b, `,"host_id":"`...)
	b = append(b, h.id...)
	b = append(b, `","time":"`...)
	b = now.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","slots":`...)
	b = append(b, f.slotsJSON[i]...)
	out := beat{}
	switch f.mode {
	case ModeFull:
		b = append(b, `,"cache":[`...)
		for k, e := range h.inv {
			if k > 0 {
				b = append(b, ',')
			}
			b = f.cat.appendBlob(b, e)
		}
		b = append(b, ']')
		out.hasInv, out.full = true, true
	case ModeDelta:
		if d := f.deltaLocked(h); d != nil {
			b = append(b, `,"inventory":`...)
			b = append(b, `{"base":`...)
			b = strconv.AppendUint(b, d.Base, 10)
			b = append(b, `,"version":`...)
			b = strconv.AppendUint(b, d.Version, 10)
			if len(d.added) > 0 {
				b = append(b, `,"added":[`...)
				for k, e := range d.added {
					if k > 0 {
						b = append(b, ',')
					}
					b = f.cat.appendBlob(b, e)
				}
				b = append(b, ']')
			}
			if len(d.removed) > 0 {
				b = append(b, `,"removed":[`...)
				for k, m := range d.removed {
					if k > 0 {
						b = append(b, ',')
					}
					b = append(b, '"')
					b = append(b, f.cat.digests[m]...)
					b = append(b, '"')
				}
				b = append(b, ']')
			}
			b = append(b, '}')
			out.version, out.inv, out.hasInv, out.full = d.Version, slices.Clone(h.inv), true, d.Base == 0
		}
	}
	b = append(b, `,"gpus":`...)
	b = append(b, f.gpusJSON[i]...)
	out.body = append(b, '}')
	return out
}

type simDelta struct {
	Base, Version uint64
	added         []entry
	removed       []uint16
}

// deltaLocked is the change to send: the whole inventory when none is
// acknowledged, the difference from the acknowledged one otherwise, nil
// when there is none.
func (f *fleet) deltaLocked(h *simHost) *simDelta {
	d := &simDelta{Base: h.acked}
	if h.acked == 0 {
		d.added = h.inv
	} else {
		a, c := h.ackedInv, h.inv
		for len(a) > 0 || len(c) > 0 {
			switch {
			case len(a) == 0 || len(c) > 0 && c[0].model < a[0].model:
				d.added, c = append(d.added, c[0]), c[1:]
			case len(c) == 0 || a[0].model < c[0].model:
				d.removed, a = append(d.removed, a[0].model), a[1:]
			default:
				if a[0] != c[0] {
					d.added = append(d.added, c[0])
				}
				a, c = a[1:], c[1:]
			}
		}
		if len(d.added) == 0 && len(d.removed) == 0 {
			return nil
		}
	}
	h.version++
	d.Version = h.version
	return d
}

// answered takes the coordinator's answer to b (ok false when the beat
// failed): the acknowledged version is adopted when it is the one sent,
// and anything else but the version already held means the next beat
// carries the whole inventory.
func (f *fleet) answered(i int, b beat, ack proto.HeartbeatAck, ok bool) {
	h := f.hosts[i]
	if !ok {
		return
	}
	if f.mode == ModeFull {
		h.synced.Store(true)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch v := ack.InventoryVersion; {
	case b.version != 0 && v == b.version:
		h.acked, h.ackedInv = v, b.inv
	case v != 0 && v == h.acked:
	default:
		h.acked, h.ackedInv = 0, nil
		h.version = max(h.version, v)
	}
	h.synced.Store(h.acked != 0)
}
