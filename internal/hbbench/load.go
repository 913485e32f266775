package hbbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

// load heartbeats the fleet: a dispatcher hands each registered host to
// the senders once per interval, at its own offset, so the beats of an
// interval are spread evenly over it; Conns senders post them over as
// many keep-alive connections. A host whose previous beat is unanswered
// when its turn comes again skips that turn (and it is counted).
type load struct {
	cfg  *Config
	fl   *fleet
	url  string
	hc   *http.Client
	jobs chan int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	written atomic.Int64 // bytes written on the connections
	beats, skipped, errs,
	invBeats, fullInvs atomic.Int64
	lastErr atomic.Value // string

	latMu sync.Mutex
	lats  []latency // answered beats, from every sender
}

type latency struct {
	done time.Time
	d    time.Duration
}

func newLoad(cfg *Config, fl *fleet, url string) *load {
	l := &load{cfg: cfg, fl: fl, url: url + "/v1/agent/heartbeat", jobs: make(chan int, cfg.Conns)}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	l.hc = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dialer.DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &countingConn{Conn: c, n: &l.written}, nil
			},
			MaxConnsPerHost:     cfg.Conns,
			MaxIdleConnsPerHost: cfg.Conns,
			IdleConnTimeout:     time.Minute,
		},
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// countingConn counts the bytes written to a connection: request lines,
// headers and bodies, what the coordinator receives.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (l *load) start() {
	l.wg.Add(1 + l.cfg.Conns)
	go func() { defer l.wg.Done(); l.dispatch() }()
	for range l.cfg.Conns {
		go func() { defer l.wg.Done(); l.send() }()
	}
}

// stop ends the load and waits for the beats in flight.
func (l *load) stop() {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.hc.CloseIdleConnections()
	})
}

// dispatch hands host i its k-th turn at start + k·interval + i·interval/n,
// checking every millisecond, and makes the interval's inventory changes
// at the start of each interval.
func (l *load) dispatch() {
	defer close(l.jobs)
	n := int64(len(l.fl.hosts))
	start := time.Now()
	var seq int64
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
		}
		due := int64(float64(time.Since(start)) / float64(l.cfg.Interval) * float64(n))
		for ; seq < due; seq++ {
			i := int(seq % n)
			if i == 0 {
				for k := range l.fl.hosts {
					if l.fl.rng.Float64() < l.cfg.ChangeRate {
						l.fl.change(k)
					}
				}
			}
			h := l.fl.hosts[i]
			if !h.registered.Load() {
				continue
			}
			if !h.inFlight.CompareAndSwap(false, true) {
				l.skipped.Add(1)
				continue
			}
			select {
			case l.jobs <- i:
			case <-l.ctx.Done():
				return
			}
		}
	}
}

// send posts the beats handed to it, one at a time.
func (l *load) send() {
	var buf []byte
	var local []latency
	defer func() {
		l.latMu.Lock()
		l.lats = append(l.lats, local...)
		l.latMu.Unlock()
	}()
	for i := range l.jobs {
		b := l.fl.buildBeat(i, time.Now(), buf[:0])
		buf = b.body
		t0 := time.Now()
		ack, err := l.post(b.body)
		done := time.Now()
		l.fl.answered(i, b, ack, err == nil)
		l.fl.hosts[i].inFlight.Store(false)
		if err != nil {
			if l.ctx.Err() == nil {
				l.errs.Add(1)
				l.lastErr.Store(err.Error())
			}
			continue
		}
		l.beats.Add(1)
		if b.hasInv {
			l.invBeats.Add(1)
		}
		if b.full {
			l.fullInvs.Add(1)
		}
		local = append(local, latency{done: done, d: done.Sub(t0)})
	}
}

func (l *load) post(body []byte) (proto.HeartbeatAck, error) {
	var ack proto.HeartbeatAck
	req, err := http.NewRequestWithContext(l.ctx, http.MethodPost, l.url, bytes.NewReader(body))
	if err != nil {
		return ack, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.hc.Do(req)
	if err != nil {
		return ack, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return ack, err
	}
	if resp.StatusCode != http.StatusOK {
		return ack, fmt.Errorf("heartbeat answered %d: %s", resp.StatusCode, bytes.TrimSpace(data))
	}
	if l.fl.mode == ModeDelta {
		if err := json.Unmarshal(data, &ack); err != nil {
			return ack, fmt.Errorf("heartbeat answer %q: %w", data, err)
		}
	}
	return ack, nil
}

// waitSynced waits until every host had a beat answered (in delta mode:
// its inventory acknowledged), at most limit.
func (l *load) waitSynced(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		n := 0
		for _, h := range l.fl.hosts {
			if h.synced.Load() {
				n++
			}
		}
		if n == len(l.fl.hosts) {
			return nil
		}
		if time.Now().After(deadline) {
			last, _ := l.lastErr.Load().(string)
			return fmt.Errorf("only %d of %d hosts had a heartbeat answered after the warmup and %s more (%d errors; last: %s)", n, len(l.fl.hosts), limit, l.errs.Load(), last)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// snapshot is the counters at one instant.
type snapshot struct {
	at                                      time.Time
	beats, skipped, errs, invBeats, fullInv int64
	written                                 int64
	leaderCPU, selfCPU, machine             time.Duration
}

func (l *load) snapshot(c *coordProc) (snapshot, error) {
	cpu, err := c.cpu()
	if err != nil {
		return snapshot{}, err
	}
	return snapshot{
		at: time.Now(), beats: l.beats.Load(), skipped: l.skipped.Load(), errs: l.errs.Load(),
		invBeats: l.invBeats.Load(), fullInv: l.fullInvs.Load(), written: l.written.Load(),
		leaderCPU: cpu, selfCPU: selfCPU(), machine: machineBusy(),
	}, nil
}

// latencies returns the round trips of the beats answered in [from, to),
// sorted. Call it after stop.
func (l *load) latencies(from, to time.Time) []time.Duration {
	l.latMu.Lock()
	defer l.latMu.Unlock()
	var out []time.Duration
	for _, x := range l.lats {
		if !x.done.Before(from) && x.done.Before(to) {
			out = append(out, x.d)
		}
	}
	slices.Sort(out)
	return out
}

// fill sets r's window figures from the snapshots s (after) and before.
func (s snapshot) fill(r *ModeResult, before snapshot, lats []time.Duration) {
	w := s.at.Sub(before.at)
	r.Window = w
	sec := w.Seconds()
	r.Beats, r.Skipped, r.Errors = s.beats-before.beats, s.skipped-before.skipped, s.errs-before.errs
	r.InventoryBeats, r.FullInventories = s.invBeats-before.invBeats, s.fullInv-before.fullInv
	r.RequestBytes = s.written - before.written
	r.BeatsPerS = float64(r.Beats) / sec
	r.MBPerS = float64(r.RequestBytes) / sec / 1e6
	if r.Beats > 0 {
		r.BeatBytes = float64(r.RequestBytes) / float64(r.Beats)
	}
	r.LeaderCores = (s.leaderCPU - before.leaderCPU).Seconds() / sec
	if r.Beats > 0 {
		r.LeaderCPUPerBeat = (s.leaderCPU - before.leaderCPU) / time.Duration(r.Beats)
	}
	r.GeneratorCores = (s.selfCPU - before.selfCPU).Seconds() / sec
	r.MachineCores = (s.machine - before.machine).Seconds() / sec
	if n := len(lats); n > 0 {
		r.P50, r.P99, r.Max = lats[n/2], lats[min(n-1, n*99/100)], lats[n-1]
	}
}

// registerAll registers every host through the agent API, cfg.Registrars
// at a time; each host joins the heartbeat schedule as soon as it is
// registered, as a starting agent would, so none sits out the heartbeat
// grace while the others register.
func registerAll(ctx context.Context, cfg *Config, fl *fleet, c *coordProc) error {
	api := client.New(c.url, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Registrars}})
	next := make(chan int)
	errc := make(chan error, cfg.Registrars)
	var wg sync.WaitGroup
	for range cfg.Registrars {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := registerOne(ctx, api, fl, i); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range fl.hosts {
		select {
		case next <- i:
		case err = <-errc:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errc:
		default:
		}
	}
	if err != nil {
		return errors.Join(err, c.alive())
	}
	return nil
}

func registerOne(ctx context.Context, api *client.Client, fl *fleet, i int) error {
	var err error
	for try := range 5 {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = api.Register(rctx, fl.registration(i))
		cancel()
		if err == nil {
			fl.hosts[i].registered.Store(true)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(time.Duration(try+1) * 200 * time.Millisecond)
	}
	return fmt.Errorf("register %s: %w", fl.hosts[i].id, err)
}
