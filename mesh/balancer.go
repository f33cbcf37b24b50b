package mesh

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-run/shoal"
)

// Route is one service port the balancer serves.
type Route struct {
	Service  string
	PortName string
	Port     int
}

// BalancerConfig configures the balancer.
type BalancerConfig struct {
	// ListenHost is the address listeners bind, on each service's port.
	ListenHost string
	// LocalNode is this node: its healthy instances are preferred.
	LocalNode string
	// DialTimeout bounds a connection attempt to an instance; default 1s.
	DialTimeout time.Duration
	// QueueTimeout is how long a connection waits for a healthy instance
	// when there is none (a replica moving, a record set briefly lost)
	// before it is closed; default 3s, negative for no wait.
	QueueTimeout time.Duration
	// Loops is the number of event loops (Linux), each keeping a P of
	// the Go runtime while it has traffic; default one fewer than
	// GOMAXPROCS, at least one. A process that raises GOMAXPROCS by Loops
	// gets a loop per core without taking Ps from its other work.
	Loops int
	// Generation, when set, changes whenever src's records do (Mesh's
	// Generation): a route's candidates are then worked out once per
	// change rather than for every connection, as the DNS caches replies.
	Generation func() uint64
	Logger     *slog.Logger
}

// ServiceStats are a service's counters.
type ServiceStats struct {
	Connections  uint64
	Active       int64
	BytesIn      uint64 // client → instance
	BytesOut     uint64 // instance → client
	DialFailures uint64
	Rate         float64 // new connections per second, last 10 s
}

// Balancer forwards TCP connections on every service port to healthy
// instances anywhere in the fleet.
type Balancer struct {
	cfg BalancerConfig
	src func() []shoal.Record
	log *slog.Logger

	routesMu sync.Mutex     // serialises SetRoutes and Close; never taken under mu
	routes   map[Route]bool // those listened on

	mu     sync.Mutex
	cands  map[Route]candidateSet // with cfg.Generation
	active map[string]*int64      // backend addr:port → open connections
	stats  map[string]*svcCounters
	closed bool
	done   chan struct{} // closed by Close: queued connections give up
	wg     sync.WaitGroup
	eng    engine // how connections are accepted and forwarded: per OS
}

type svcCounters struct {
	conns, bytesIn, bytesOut, dialFailures atomic.Uint64
	active                                 atomic.Int64
	mu                                     sync.Mutex
	window                                 rateWindow
}

// NewBalancer makes a balancer choosing among src's healthy records.
func NewBalancer(cfg BalancerConfig, src func() []shoal.Record) *Balancer {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.QueueTimeout == 0 {
		cfg.QueueTimeout = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Balancer{cfg: cfg, src: src, log: cfg.Logger, done: make(chan struct{}), routes: map[Route]bool{}, cands: map[Route]candidateSet{},
		active: map[string]*int64{}, stats: map[string]*svcCounters{}}
}

// SetRoutes opens listeners for every new route and closes those of
// routes that went away; connections open on a closed route carry on. A
// port that cannot be bound is logged and tried again on the next call.
func (b *Balancer) SetRoutes(routes []Route) {
	b.routesMu.Lock()
	defer b.routesMu.Unlock()
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return
	}
	want := map[Route]bool{}
	for _, r := range routes {
		want[r] = true
		if b.routes[r] {
			continue
		}
		addr := net.JoinHostPort(b.cfg.ListenHost, strconv.Itoa(r.Port))
		if err := b.listen(r, addr, b.statsOf(r.Service)); err != nil {
			b.log.Warn("balancer cannot listen", "service", r.Service, "addr", addr, "err", err)
			continue
		}
		b.routes[r] = true
		b.log.Info("balancing", "service", r.Service, "port", r.PortName, "addr", addr)
	}
	for r := range b.routes {
		if !want[r] {
			b.unlisten(r)
			delete(b.routes, r)
			b.mu.Lock()
			delete(b.cands, r)
			b.mu.Unlock()
		}
	}
}

// Close stops listening and closes open connections.
func (b *Balancer) Close() error {
	b.routesMu.Lock()
	defer b.routesMu.Unlock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	b.mu.Unlock()
	b.stop()
	clear(b.routes)
	b.wg.Wait()
	return nil
}

// ReserveProcs adds loops Ps for loops balancer event loops, which keep
// theirs while traffic flows, so Serf, DNS and the collector still have
// as many as before — and Ps stay idle, so Go's sysmon does not take Ps
// back from system calls every 20 µs (a tenth of the CPU of both the
// balancer and the DNS under load, measured). Call it at start and pass
// loops as BalancerConfig.Loops; a second call replaces the first.
func ReserveProcs(loops int) {
	runtime.GOMAXPROCS(baseProcs + loops)
}

// baseProcs is GOMAXPROCS as the process started: the CPUs it may use.
var baseProcs = runtime.GOMAXPROCS(0)

// CPUs is how many CPUs the process may use, as it started (before
// ReserveProcs): the default number of loops.
func CPUs() int { return baseProcs }

// queuePoll is how often a queued connection looks for an instance again.
const queuePoll = 50 * time.Millisecond

// maxDialAttempts is how many instances a connection tries before it waits
// in the queue.
const maxDialAttempts = 5

// Run waits for ctx, then closes the balancer.
func (b *Balancer) Run(ctx context.Context) error {
	<-ctx.Done()
	return b.Close()
}

type candidateSet struct {
	gen   uint64
	cands []candidate
}

// candidate is an instance a new connection may go to, with what a pick
// and a dial need worked out once per records generation, not per
// connection.
type candidate struct {
	addr   string     // host:port
	ip     netip.Addr // the instance's address; invalid if it is not an IP
	port   int
	active *int64 // open connections to addr, across routes
}

// candidates are the healthy instances of a route, on every node: when
// traffic enters the fleet through one node (one public address), the
// replicas elsewhere must get their share too. Local instances are dialed
// at their container address, which saves the host port's translation.
// Callers do not modify them.
func (b *Balancer) candidates(r Route) []candidate {
	if b.cfg.Generation == nil {
		return b.candidatesOf(r)
	}
	gen := b.cfg.Generation() // before the records: a change meanwhile is seen next time
	b.mu.Lock()
	c, ok := b.cands[r]
	b.mu.Unlock()
	if ok && c.gen == gen {
		return c.cands
	}
	cands := b.candidatesOf(r)
	b.mu.Lock()
	b.cands[r] = candidateSet{gen: gen, cands: cands}
	b.mu.Unlock()
	return cands
}

func (b *Balancer) candidatesOf(r Route) []candidate {
	var all []candidate
	for _, rec := range b.src() {
		if rec.Service != r.Service || rec.PortName != r.PortName || !rec.Healthy {
			continue
		}
		addr := backendAddr(rec)
		ip, port := netip.Addr{}, rec.Port
		if ap, err := netip.ParseAddrPort(rec.Local); err == nil && rec.Node == b.cfg.LocalNode {
			addr, ip, port = rec.Local, ap.Addr(), int(ap.Port())
		} else {
			ip, _ = netip.ParseAddr(rec.Addr)
		}
		all = append(all, candidate{addr: addr, ip: ip, port: port, active: b.counter(addr)})
	}
	return all
}

func (b *Balancer) counter(addr string) *int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.active[addr]
	if c == nil {
		c = new(int64)
		b.active[addr] = c
	}
	return c
}

// pick chooses among cands by power of two choices: two random
// candidates, the one with fewer open connections. Ties go to the first
// drawn, at random: a preference for local instances on ties would send
// them most of a light load, and the replicas elsewhere (those
// autoscaling just added, say) would idle.
func (b *Balancer) pick(cands []candidate) int {
	n := len(cands)
	if n == 1 {
		return 0
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	if atomic.LoadInt64(cands[j].active) < atomic.LoadInt64(cands[i].active) {
		return j
	}
	return i
}

func backendAddr(r shoal.Record) string { return net.JoinHostPort(r.Addr, strconv.Itoa(r.Port)) }

func (b *Balancer) statsOf(svc string) *svcCounters {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.stats[svc]
	if s == nil {
		s = &svcCounters{}
		b.stats[svc] = s
	}
	return s
}

// Stats returns the counters of every service.
func (b *Balancer) Stats() map[string]ServiceStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	out := map[string]ServiceStats{}
	for svc, s := range b.stats {
		s.mu.Lock()
		rate := s.window.rate(now)
		s.mu.Unlock()
		out[svc] = ServiceStats{Connections: s.conns.Load(), Active: s.active.Load(), BytesIn: s.bytesIn.Load(),
			BytesOut: s.bytesOut.Load(), DialFailures: s.dialFailures.Load(), Rate: rate}
	}
	return out
}

// rateWindow counts events in one-second buckets over the last 10 s.
type rateWindow struct {
	buckets [10]uint64
	stamps  [10]int64 // the second each bucket counts
}

func (w *rateWindow) add(now time.Time) {
	sec := now.Unix()
	i := sec % 10
	if w.stamps[i] != sec {
		w.stamps[i], w.buckets[i] = sec, 0
	}
	w.buckets[i]++
}

// rate is events per second over the 10 whole seconds before now; a pure
// function of the window and the time asked.
func (w *rateWindow) rate(now time.Time) float64 {
	sec := now.Unix()
	var n uint64
	for i := range w.buckets {
		if age := sec - w.stamps[i]; age >= 0 && age < 10 {
			n += w.buckets[i]
		}
	}
	return float64(n) / 10
}
