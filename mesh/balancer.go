package mesh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
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
	Logger       *slog.Logger
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

	mu        sync.Mutex
	listeners map[Route]net.Listener
	active    map[string]*int64 // backend addr:port → open connections
	stats     map[string]*svcCounters
	closed    bool
	done      chan struct{} // closed by Close: queued connections give up
	wg        sync.WaitGroup
	conns     map[net.Conn]struct{}
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
	return &Balancer{cfg: cfg, src: src, log: cfg.Logger, done: make(chan struct{}), listeners: map[Route]net.Listener{},
		active: map[string]*int64{}, stats: map[string]*svcCounters{}, conns: map[net.Conn]struct{}{}}
}

// SetRoutes opens a listener for every new route and closes those of
// routes that went away. A port that cannot be bound is logged and tried
// again on the next call.
func (b *Balancer) SetRoutes(routes []Route) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	want := map[Route]bool{}
	for _, r := range routes {
		want[r] = true
		if _, ok := b.listeners[r]; ok {
			continue
		}
		addr := net.JoinHostPort(b.cfg.ListenHost, strconv.Itoa(r.Port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			b.log.Warn("balancer cannot listen", "service", r.Service, "addr", addr, "err", err)
			continue
		}
		b.listeners[r] = ln
		if b.stats[r.Service] == nil {
			b.stats[r.Service] = &svcCounters{}
		}
		b.log.Info("balancing", "service", r.Service, "port", r.PortName, "addr", ln.Addr().String())
		b.wg.Add(1)
		go b.accept(r, ln)
	}
	for r, ln := range b.listeners {
		if !want[r] {
			ln.Close()
			delete(b.listeners, r)
		}
	}
}

// Run waits for ctx, then closes the balancer.
func (b *Balancer) Run(ctx context.Context) error {
	<-ctx.Done()
	return b.Close()
}

// Close stops listening and closes open connections.
func (b *Balancer) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	for r, ln := range b.listeners {
		ln.Close()
		delete(b.listeners, r)
	}
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return nil
}

func (b *Balancer) accept(r Route, ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.wg.Done()
			b.forward(r, c)
			b.mu.Lock()
			delete(b.conns, c)
			b.mu.Unlock()
		}()
	}
}

// candidates are the healthy instances of a route; local ones only, when
// any is healthy, to save a network hop.
func (b *Balancer) candidates(r Route) []shoal.Record {
	var local, all []shoal.Record
	for _, rec := range b.src() {
		if rec.Service != r.Service || rec.PortName != r.PortName || !rec.Healthy {
			continue
		}
		all = append(all, rec)
		if rec.Node == b.cfg.LocalNode {
			local = append(local, rec)
		}
	}
	if len(local) > 0 {
		return local
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

// pick chooses by power of two choices: two random candidates, the one
// with fewer open connections.
func (b *Balancer) pick(cands []shoal.Record) int {
	if len(cands) == 1 {
		return 0
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	if atomic.LoadInt64(b.counter(backendAddr(cands[j]))) < atomic.LoadInt64(b.counter(backendAddr(cands[i]))) {
		return j
	}
	return i
}

func backendAddr(r shoal.Record) string { return net.JoinHostPort(r.Addr, strconv.Itoa(r.Port)) }

func (b *Balancer) forward(r Route, client net.Conn) {
	defer client.Close()
	st := b.statsOf(r.Service)
	st.conns.Add(1)
	st.active.Add(1)
	defer st.active.Add(-1)
	st.mu.Lock()
	st.window.add(time.Now())
	st.mu.Unlock()

	backend, addr := b.dial(r, st)
	if backend == nil {
		return
	}
	defer backend.Close()
	n := b.counter(addr)
	atomic.AddInt64(n, 1)
	defer atomic.AddInt64(n, -1)

	done := make(chan struct{})
	go func() {
		// io.Copy between TCP connections uses splice(2) on Linux.
		w, _ := io.Copy(backend, client)
		st.bytesIn.Add(uint64(w))
		closeWrite(backend)
		close(done)
	}()
	w, _ := io.Copy(client, backend)
	st.bytesOut.Add(uint64(w))
	closeWrite(client)
	<-done
}

// dial connects to a healthy instance of r. A failed connect tries another
// instance, up to five; with none to try, the connection waits in a queue
// for up to QueueTimeout, so a gap in the records (a replica moving, a
// peer's records dropped until it is seen again) delays the client
// instead of failing it.
func (b *Balancer) dial(r Route, st *svcCounters) (net.Conn, string) {
	var deadline time.Time
	for {
		cands := b.candidates(r)
		for attempt := 0; attempt < 5 && len(cands) > 0; attempt++ {
			i := b.pick(cands)
			addr := backendAddr(cands[i])
			c, err := net.DialTimeout("tcp", addr, b.cfg.DialTimeout)
			if err == nil {
				return c, addr
			}
			st.dialFailures.Add(1)
			b.log.Debug("dial backend", "service", r.Service, "addr", addr, "err", err)
			cands = append(cands[:i:i], cands[i+1:]...)
		}
		now := time.Now()
		if deadline.IsZero() {
			if b.cfg.QueueTimeout < 0 {
				return nil, ""
			}
			deadline = now.Add(b.cfg.QueueTimeout)
		}
		if now.After(deadline) {
			b.log.Debug("no healthy instance", "service", r.Service, "port", r.PortName)
			return nil, ""
		}
		select {
		case <-b.done:
			return nil, ""
		case <-time.After(queuePoll):
		}
	}
}

// queuePoll is how often a queued connection looks for an instance again.
const queuePoll = 50 * time.Millisecond

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}

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
