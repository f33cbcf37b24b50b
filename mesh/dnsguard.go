package mesh

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// What keeps the DNS from serving strangers, from being used as a
// reflector, and from drowning in its own forwarding: allowed source
// prefixes, a rate limit per source, a bound on queries in flight, and a
// pool of upstream sockets.

// maxLimited bounds the rate limiter's table of sources.
const maxLimited = 10000

// allowed reports whether src may be answered.
func (d *DNS) allowed(src netip.Addr) bool {
	if len(d.cfg.AllowedSources) == 0 {
		return true
	}
	if !src.IsValid() {
		return false
	}
	src = src.Unmap()
	for _, p := range d.cfg.AllowedSources {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// admit takes one reply's worth from src's rate budget; false drops the
// query, and counts it.
func (d *DNS) admit(src netip.Addr, now time.Time) bool {
	if d.limiter == nil || !src.IsValid() {
		return true
	}
	if d.limiter.allow(src.Unmap(), now) {
		return true
	}
	d.limited.Add(1)
	return false
}

// serveTCP is the TCP server's handler: the source check and the bound on
// queries in flight, then serve. TCP sources cannot be spoofed, so no
// rate limit.
func (d *DNS) serveTCP(w dns.ResponseWriter, req *dns.Msg) {
	if !d.allowed(addrOf(w.RemoteAddr())) {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		d.count(dns.RcodeRefused)
		w.WriteMsg(m)
		return
	}
	select {
	case d.slots <- struct{}{}:
		defer func() { <-d.slots }()
		d.serve(w, req)
	default:
		d.busy(w, req)
	}
}

// busy answers SERVFAIL at once: too many queries in flight.
func (d *DNS) busy(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	d.count(dns.RcodeServerFailure)
	w.WriteMsg(m)
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr()
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	}
	return netip.Addr{}
}

// refusal builds, in out, the REFUSED reply to the raw query q: its
// header and question, nothing else, so it is no bigger than the query.
// ok is false for what deserves no answer (a response, or too short).
func refusal(q, out []byte) (reply []byte, ok bool) {
	if len(q) < 12 || q[2]&0x80 != 0 {
		return nil, false
	}
	end, qd := 12, uint16(0)
	if binary.BigEndian.Uint16(q[4:]) == 1 {
		i := 12
		for i < len(q) {
			l := int(q[i])
			i++
			if l == 0 {
				if i+4 <= len(q) {
					end, qd = i+4, 1
				}
				break
			}
			if l > 63 {
				break // a pointer or garbage: answer without the question
			}
			i += l
		}
	}
	if end > len(out) {
		return nil, false
	}
	reply = out[:copy(out, q[:end])]
	reply[2] = 0x80 | q[2]&0x79 // QR; the opcode and RD echoed
	reply[3] = dns.RcodeRefused
	binary.BigEndian.PutUint16(reply[4:], qd)
	clear(reply[6:12])
	return reply, true
}

// rateLimiter is a token bucket per source address, in a bounded table.
type rateLimiter struct {
	rate, burst float64
	max         int

	mu      sync.Mutex
	buckets map[netip.Addr]bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newRateLimiter(rate, burst float64, max int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, max: max, buckets: map[netip.Addr]bucket{}}
}

// refill is what a bucket holds at now, given rate per second and burst.
func refill(b bucket, now time.Time, rate, burst float64) float64 {
	elapsed := max(now.Sub(b.at).Seconds(), 0)
	return min(burst, b.tokens+elapsed*rate)
}

// allow takes a token from src's bucket, if it has one.
func (l *rateLimiter) allow(src netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[src]
	if ok {
		b.tokens = refill(b, now, l.rate, l.burst)
	} else {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b.tokens = l.burst
	}
	b.at = now
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.buckets[src] = b
	return allowed
}

// evict drops the buckets that have refilled (their sources are quiet);
// if that frees nothing, the whole table, which a flood of sources has
// filled. l.mu is held.
func (l *rateLimiter) evict(now time.Time) {
	for a, b := range l.buckets {
		if refill(b, now, l.rate, l.burst) >= l.burst {
			delete(l.buckets, a)
		}
	}
	if len(l.buckets) >= l.max {
		clear(l.buckets)
	}
}

// Upstream sockets: UDP exchanges reuse a few sockets per upstream
// instead of one new socket each; each query goes out with an ID of its
// own, and a socket is retired after maxUses so its port keeps changing.
const (
	idlePerUpstream = 8
	maxUses         = 64
	upstreamTimeout = 2 * time.Second
)

type upstreams struct {
	mu     sync.Mutex
	idle   map[string][]*upConn
	closed bool
}

type upConn struct {
	c    *dns.Conn
	uses int
}

func newUpstreams() *upstreams { return &upstreams{idle: map[string][]*upConn{}} }

// exchange asks addr; over TCP when the client asked over TCP.
func (u *upstreams) exchange(req *dns.Msg, addr string, tcp bool) (*dns.Msg, error) {
	c := &dns.Client{Timeout: upstreamTimeout}
	if tcp {
		c.Net = "tcp"
		resp, _, err := c.Exchange(req, addr)
		if err != nil {
			return nil, fmt.Errorf("ask %s: %w", addr, err)
		}
		return resp, nil
	}
	uc := u.get(addr)
	if uc == nil {
		conn, err := c.Dial(addr)
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		uc = &upConn{c: conn}
	}
	id := req.Id
	req.Id = dns.Id()
	resp, _, err := c.ExchangeWithConn(req, uc.c)
	req.Id = id
	if err != nil {
		uc.c.Close() // a late answer must not reach the next query
		return nil, fmt.Errorf("ask %s: %w", addr, err)
	}
	resp.Id = id
	uc.uses++
	u.put(addr, uc)
	return resp, nil
}

func (u *upstreams) get(addr string) *upConn {
	u.mu.Lock()
	defer u.mu.Unlock()
	idle := u.idle[addr]
	if len(idle) == 0 {
		return nil
	}
	uc := idle[len(idle)-1]
	u.idle[addr] = idle[:len(idle)-1]
	return uc
}

func (u *upstreams) put(addr string, uc *upConn) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || uc.uses >= maxUses || len(u.idle[addr]) >= idlePerUpstream {
		uc.c.Close()
		return
	}
	u.idle[addr] = append(u.idle[addr], uc)
}

// sockets is how many idle upstream sockets are kept, for tests.
func (u *upstreams) sockets() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, idle := range u.idle {
		n += len(idle)
	}
	return n
}

func (u *upstreams) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for addr, idle := range u.idle {
		for _, uc := range idle {
			uc.c.Close()
		}
		delete(u.idle, addr)
	}
}
