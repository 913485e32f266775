package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

var (
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("gossip: pool is closed")
	// ErrWrongKey is returned by Join when the seeds refused this member's
	// encryption: its SecretKeys (or their absence) differ from theirs.
	ErrWrongKey = errors.New("gossip: the gossip key is probably wrong")
	// ErrNoSeed is returned by Join when no seed answered before the
	// deadline. A seed of another cluster (a different Label) hangs up
	// without a word, so this is also what a wrong Label looks like.
	ErrNoSeed = errors.New("gossip: no seed answered")
)

const (
	// departedRetention is how long Members keeps reporting a dead or left
	// member before forgetting it.
	departedRetention = time.Hour
	// maxBroadcast keeps a user message, with memberlist's framing, label
	// and encryption overhead, inside one UDP packet (1,400 bytes);
	// bigger changes wait for push/pull.
	maxBroadcast = 1000
	// maxQueued bounds the broadcast queue when changes come faster than
	// gossip sends them; the oldest go first, and push/pull repairs.
	maxQueued = 4096
	// maxPushPullState stays well under memberlist's 20 MB push/pull limit;
	// past it, other members' inventories are left out (each member still
	// sends its own).
	maxPushPullState  = 8 << 20
	metaUpdateTimeout = 5 * time.Second
)

// Pool is this process's membership in the gossip pool. Its methods are
// safe for concurrent use.
type Pool struct {
	// Locking: memberlist calls the delegate with its own node lock held,
	// and the delegate takes mu; so nothing may call into memberlist while
	// holding mu.
	cfg     Config
	log     *slog.Logger
	ml      *memberlist.Memberlist
	keyring *memberlist.Keyring
	queue   *memberlist.TransmitLimitedQueue
	// epoch tells this run's inventory versions from a previous run's.
	epoch uint64

	// life serialises Leave and Close with meta updates: re-advertising
	// after Leave would bring the member back.
	life   sync.RWMutex
	left   bool
	closed bool

	mu        sync.Mutex
	meta      NodeMeta
	metaBytes []byte
	selfAddr  string
	members   map[string]*Member
	local     *record
	remote    map[string]*record
	// leaving holds members that announced Leave (with their epoch) and
	// that memberlist has not yet reported gone.
	leaving map[string]uint64
	// leavingSelf is set before this member's own Leave, which memberlist
	// reports back through NotifyLeave.
	leavingSelf atomic.Bool

	evMu     sync.Mutex
	evQueue  []Event
	evKick   chan struct{}
	metaKick chan struct{}
	done     chan struct{}
	wg       sync.WaitGroup
}

// New validates cfg, starts gossip on cfg.BindAddr and, if cfg.Join lists
// members, joins them, retrying for up to cfg.JoinTimeout. On a join error
// the pool is closed again.
func New(cfg *Config) (*Pool, error) {
	if err := ValidateConfig(cfg); err != nil {
		return nil, err
	}
	p := &Pool{
		cfg:      *cfg,
		log:      cfg.Logger,
		epoch:    uint64(time.Now().UnixNano()),
		members:  map[string]*Member{},
		remote:   map[string]*record{},
		leaving:  map[string]uint64{},
		evKick:   make(chan struct{}, 1),
		metaKick: make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("component", "gossip")
	p.cfg.Labels = maps.Clone(cfg.Labels)
	p.cfg.Join = append([]string(nil), cfg.Join...)
	p.local = newRecord(p.epoch)
	p.meta = NodeMeta{Role: cfg.Role, APIAddr: cfg.APIAddr, BlobAddr: cfg.BlobAddr, Labels: p.cfg.Labels}
	p.metaBytes = p.meta.encode() // ValidateConfig checked the size

	mlc := memberlist.DefaultLANConfig()
	mlc.Name = cfg.NodeName
	bindIP, bindPort, _ := splitIPPort(cfg.BindAddr, true)
	mlc.BindAddr, mlc.BindPort = bindIP.String(), bindPort
	mlc.AdvertisePort = bindPort
	if cfg.AdvertiseAddr != "" {
		ip, port, _ := splitIPPort(cfg.AdvertiseAddr, false)
		mlc.AdvertiseAddr, mlc.AdvertisePort = ip.String(), port
	}
	mlc.Label = cfg.Label
	if len(cfg.SecretKeys) > 0 {
		kr, err := memberlist.NewKeyring(cfg.SecretKeys, cfg.SecretKeys[0])
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring: %w", err)
		}
		p.keyring, mlc.Keyring = kr, kr
	} else {
		p.log.Warn("gossip is not encrypted: anyone who can reach the gossip port can join and read inventories; set SecretKeys")
	}
	if cfg.ProbeInterval > 0 {
		mlc.ProbeInterval = cfg.ProbeInterval
		mlc.ProbeTimeout = min(mlc.ProbeTimeout, cfg.ProbeInterval/2)
	}
	if cfg.GossipInterval > 0 {
		mlc.GossipInterval = cfg.GossipInterval
	}
	if cfg.PushPullInterval > 0 {
		mlc.PushPullInterval = cfg.PushPullInterval
	}
	d := &delegate{p}
	mlc.Delegate, mlc.Events = d, d
	mlc.Logger = log.New(&logWriter{log: p.log}, "", 0)
	p.queue = &memberlist.TransmitLimitedQueue{NumNodes: p.numAlive, RetransmitMult: mlc.RetransmitMult}

	ml, err := memberlist.Create(mlc)
	if err != nil {
		return nil, fmt.Errorf("gossip: listen on %s: %w", cfg.BindAddr, err)
	}
	p.ml = ml
	// Read once, before anything else can re-advertise this node: memberlist
	// rewrites its Node fields under a lock we cannot take.
	n := ml.LocalNode()
	p.mu.Lock()
	p.selfAddr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	p.mu.Unlock()
	p.wg.Add(2)
	go p.runEvents()
	go p.runMeta()
	p.log.Info("gossip started", "node", cfg.NodeName, "role", cfg.Role, "addr", p.LocalNode().Addr,
		"encrypted", p.keyring != nil, "label", cfg.Label)

	if len(p.cfg.Join) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.JoinTimeout)
		defer cancel()
		if _, err := p.Join(ctx, p.cfg.Join); err != nil {
			_ = p.Close()
			return nil, err
		}
	}
	return p, nil
}

// Join contacts addrs (host:port) and syncs state with every one that
// answers, retrying with backoff until one does or ctx is done. It returns
// how many answered. A refusal that points at the key is not retried.
func (p *Pool) Join(ctx context.Context, addrs []string) (int, error) {
	if p.isClosed() {
		return 0, ErrClosed
	}
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		n, err := p.ml.Join(addrs)
		if n > 0 {
			p.log.Info("gossip joined", "contacted", n, "of", len(addrs), "attempt", attempt, "members", p.numAlive())
			return n, nil
		}
		if keyProblem(err) {
			p.log.Error("gossip join refused: the gossip key (SecretKeys) is probably wrong; every member must share one key", "seeds", addrs, "err", flatten(err))
			return 0, fmt.Errorf("%w (SecretKeys must match the cluster's): join %v: %s", ErrWrongKey, addrs, flatten(err))
		}
		select {
		case <-ctx.Done():
			p.log.Error("gossip join failed: no seed answered; check the addresses, that the seeds run, and that Label and SecretKeys match theirs",
				"seeds", addrs, "attempts", attempt, "err", flatten(err))
			return 0, fmt.Errorf("%w after %d attempts (check the addresses, and that Label and SecretKeys match the cluster's): join %v: %s",
				ErrNoSeed, attempt, addrs, flatten(err))
		case <-time.After(backoff):
		}
		p.log.Debug("gossip join retrying", "seeds", addrs, "attempt", attempt, "err", flatten(err))
		backoff = min(2*backoff, 5*time.Second)
	}
}

// flatten puts memberlist's multi-line list of join errors on one line.
func flatten(err error) string {
	if err == nil {
		return "no seeds given"
	}
	var parts []string
	for _, l := range strings.Split(err.Error(), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "* "))
		if l != "" && !strings.HasSuffix(l, "occurred:") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// keyProblem reports whether a join error comes from encryption: the seed
// could not decrypt us, or we it, or one side has no key at all.
func keyProblem(err error) bool {
	return err != nil && strings.Contains(strings.ToLower(err.Error()), "crypt")
}

// Leave tells the pool this member is going, waiting up to timeout for the
// message to go out, so peers mark it left at once instead of dead after
// failure detection. Gossip keeps running until Close.
func (p *Pool) Leave(timeout time.Duration) error {
	p.life.Lock()
	defer p.life.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.left {
		return nil
	}
	p.left = true
	p.leavingSelf.Store(true)
	// Queued before memberlist's own leave message, so the two usually
	// travel in one packet; peers cope with either order.
	p.send([]outgoing{{name: p.cfg.NodeName + "/leave", msg: encodeLeaveMsg(p.cfg.NodeName, p.epoch)}})
	err := p.ml.Leave(timeout)
	if err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	p.log.Info("gossip left the pool")
	return nil
}

// Close stops gossip. Without Leave first, peers find out by failure
// detection and mark this member dead. Close is idempotent; Config.Events
// must not call it.
func (p *Pool) Close() error {
	p.life.Lock()
	if p.closed {
		p.life.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	err := p.ml.Shutdown()
	p.life.Unlock()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

func (p *Pool) isClosed() bool {
	p.life.RLock()
	defer p.life.RUnlock()
	return p.closed
}

// LocalNode returns this member as peers see it.
func (p *Pool) LocalNode() Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	if m := p.members[p.cfg.NodeName]; m != nil {
		return m.clone()
	}
	return Member{Name: p.cfg.NodeName, Addr: p.selfAddr, Role: p.meta.Role, APIAddr: p.meta.APIAddr,
		BlobAddr: p.meta.BlobAddr, Labels: maps.Clone(p.meta.Labels), InventoryVersion: p.meta.InventoryVersion}
}

// Members returns every member this one knows, itself included, sorted by
// name; dead and left members stay listed for an hour.
func (p *Pool) Members() []Member {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Member, 0, len(p.members))
	for name, m := range p.members {
		if m.State != StateAlive && time.Since(m.Since) > departedRetention && name != p.cfg.NodeName {
			delete(p.members, name)
			continue
		}
		out = append(out, m.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (p *Pool) numAlive() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.members {
		if m.State == StateAlive {
			n++
		}
	}
	return n
}

// UpdateMeta replaces this member's APIAddr, BlobAddr and Labels (Role and
// InventoryVersion in m are ignored) and re-advertises them, waiting up to
// timeout for the update to go out.
func (p *Pool) UpdateMeta(m NodeMeta, timeout time.Duration) error {
	p.mu.Lock()
	next := NodeMeta{Role: p.meta.Role, APIAddr: m.APIAddr, BlobAddr: m.BlobAddr, Labels: maps.Clone(m.Labels), InventoryVersion: ^uint64(0)}
	if err := next.validate(); err != nil {
		p.mu.Unlock()
		return err
	}
	next.InventoryVersion = p.meta.InventoryVersion
	p.meta, p.metaBytes = next, next.encode()
	p.mu.Unlock()
	return p.advertise(timeout)
}

func (p *Pool) advertise(timeout time.Duration) error {
	p.life.RLock()
	defer p.life.RUnlock()
	if p.closed {
		return ErrClosed
	}
	if p.left {
		return errors.New("gossip: cannot update meta after Leave")
	}
	if err := p.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip: update meta: %w", err)
	}
	return nil
}

// runMeta re-advertises the meta after SetInventory, off the caller's
// goroutine, folding bursts into one update.
func (p *Pool) runMeta() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case <-p.metaKick:
			if err := p.advertise(metaUpdateTimeout); err != nil && !errors.Is(err, ErrClosed) {
				p.log.Debug("gossip meta update not confirmed", "err", err)
			}
		}
	}
}

func (p *Pool) emit(ev Event) {
	if p.cfg.Events == nil {
		return
	}
	p.evMu.Lock()
	p.evQueue = append(p.evQueue, ev)
	p.evMu.Unlock()
	select {
	case p.evKick <- struct{}{}:
	default:
	}
}

// runEvents calls Config.Events outside memberlist's lock, so the callback
// may call back into the Pool.
func (p *Pool) runEvents() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case <-p.evKick:
		}
		for {
			p.evMu.Lock()
			q := p.evQueue
			p.evQueue = nil
			p.evMu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, ev := range q {
				select {
				case <-p.done:
					return
				default:
				}
				p.cfg.Events(ev)
			}
		}
	}
}
