package mesh

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal"
)

// runDNS serves d until the test ends.
func runDNS(t *testing.T, d *DNS) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-d.Ready()
}

// askFrom sends m from a client bound to local (any port).
func askFrom(t *testing.T, local, server, network string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	ip := net.ParseIP(local)
	if network == "tcp" {
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: ip}}
	}
	in, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("ask %s from %s over %s: %v", m.Question[0].Name, local, network, err)
	}
	return in
}

// TestContainerDNSRefusesStrangers: a DNS with allowed sources answers
// them, over UDP and TCP, cached or not, and tells anyone else REFUSED,
// for names inside .shoal and names it would forward alike.
func TestContainerDNSRefusesStrangers(t *testing.T) {
	recs := []shoal.Record{{Service: "web", Node: "n1", Addr: "10.9.0.1", PortName: "http", Port: 20000, Healthy: true}}
	upstream := countingUpstream(t)
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", Upstreams: []string{upstream.addr}, Generation: func() uint64 { return 1 }, Logger: quiet,
		AllowedSources: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}}, func() []shoal.Record { return recs })
	runDNS(t, d)
	for _, network := range []string{"udp", "tcp"} {
		for _, name := range []string{"web.service.shoal.", "example.org."} {
			if network == "tcp" && name == "example.org." {
				continue // the fake upstream speaks UDP only
			}
			for range 3 { // the first misses the cache, the others hit it
				m := new(dns.Msg)
				m.SetQuestion(name, dns.TypeA)
				if in := askFrom(t, "127.0.0.2", d.Addr(), network, m); in.Rcode != dns.RcodeSuccess || len(in.Answer) != 1 {
					t.Fatalf("%s %s from an allowed source: %v", network, name, in)
				}
				in := askFrom(t, "127.0.0.1", d.Addr(), network, m)
				if in.Rcode != dns.RcodeRefused || len(in.Answer) != 0 || in.Id != m.Id || len(in.Question) != 1 || in.Question[0].Name != name {
					t.Fatalf("%s %s from a stranger: %v", network, name, in)
				}
			}
		}
	}
	if got := upstream.queries(); got != 3 {
		t.Errorf("the upstream got %d queries, want the allowed source's 3", got)
	}
}

// upstreamServer is a resolver that answers every A query with 192.0.2.1
// and notes the source ports it was asked from; or, black-holed, never
// answers.
type upstreamServer struct {
	addr string
	mu   sync.Mutex
	n    int
	port map[int]bool
}

func (u *upstreamServer) queries() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

func (u *upstreamServer) ports() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.port)
}

func countingUpstream(t *testing.T) *upstreamServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstreamServer{addr: pc.LocalAddr().String(), port: map[int]bool{}}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.mu.Lock()
		u.n++
		u.port[w.RemoteAddr().(*net.UDPAddr).Port] = true
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)})
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() { srv.ActivateAndServe(); close(done) }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return u
}

// TestForwardReusesUpstreamSockets: forwarded queries go out over a few
// reused sockets, not one new socket each, with answers matched to the
// right client's ID.
func TestForwardReusesUpstreamSockets(t *testing.T) {
	upstream := countingUpstream(t)
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", Upstreams: []string{upstream.addr}, Logger: quiet}, func() []shoal.Record { return nil })
	runDNS(t, d)
	for i := range 40 {
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeA)
		in := askFrom(t, "127.0.0.1", d.Addr(), "udp", m)
		if in.Id != m.Id || len(in.Answer) != 1 {
			t.Fatalf("query %d: %v", i, in)
		}
	}
	if n := upstream.ports(); n > 2 {
		t.Fatalf("40 forwarded queries came from %d source ports: a socket per query", n)
	}
	if n := d.ups.sockets(); n < 1 || n > idlePerUpstream {
		t.Fatalf("%d idle upstream sockets", n)
	}
}

// TestForwardBoundsInflight: with the upstream silent, queries beyond
// MaxInflight get SERVFAIL at once instead of piling up a goroutine and a
// socket each.
func TestForwardBoundsInflight(t *testing.T) {
	hole, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", Upstreams: []string{hole.LocalAddr().String()}, MaxInflight: 2, Logger: quiet}, func() []shoal.Record { return nil })
	runDNS(t, d)
	c, err := net.Dial("udp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 20
	for i := range sent {
		m := new(dns.Msg)
		m.SetQuestion("example.org.", dns.TypeA)
		m.Id = uint16(i + 1)
		b, _ := m.Pack()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(upstreamTimeout / 2)) // well before any forward gives up
	fails := 0
	buf := make([]byte, 512)
	for fails < sent-2 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d SERVFAIL before %v, want %d: %v", fails, upstreamTimeout/2, sent-2, err)
		}
		in := new(dns.Msg)
		if in.Unpack(buf[:n]) == nil && in.Rcode == dns.RcodeServerFailure {
			fails++
		}
	}
}

// TestRateLimitPerSource: one source gets its burst, then its queries are
// dropped and counted; the table of sources stays bounded.
func TestRateLimitPerSource(t *testing.T) {
	recs := []shoal.Record{{Service: "web", Node: "n1", Addr: "10.9.0.1", PortName: "http", Port: 20000, Healthy: true}}
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", Upstreams: []string{}, Generation: func() uint64 { return 1 }, RateLimit: 5, Logger: quiet}, func() []shoal.Record { return recs })
	runDNS(t, d)
	c, err := net.Dial("udp", d.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 200
	m := new(dns.Msg)
	m.SetQuestion("web.service.shoal.", dns.TypeA)
	b, _ := m.Pack()
	for range sent {
		c.Write(b)
	}
	total := func() uint64 {
		var n uint64
		for _, v := range d.Stats() {
			n += v
		}
		return n
	}
	eventually(t, 5*time.Second, "every query answered or dropped", func() bool { return total() >= sent-5 }) // a few may be lost on the way
	if limited, answered := d.Stats()["RATELIMITED"], d.Stats()["NOERROR"]; answered > 20 || limited < sent-30 {
		t.Fatalf("%d answered, %d dropped of %d from one source at 5/s", answered, limited, sent)
	}
}

func TestRateLimiterBuckets(t *testing.T) {
	l := newRateLimiter(10, 20, 3)
	t0 := time.Unix(1000, 0)
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i := range 20 {
		if !l.allow(a, t0) {
			t.Fatalf("query %d of the burst refused", i)
		}
	}
	if l.allow(a, t0) {
		t.Fatal("burst exceeded")
	}
	if !l.allow(b, t0) {
		t.Fatal("another source shares the bucket")
	}
	if !l.allow(a, t0.Add(100*time.Millisecond)) || l.allow(a, t0.Add(100*time.Millisecond)) {
		t.Fatal("0.1 s at 10/s should refill exactly one")
	}
	for i := range 10 {
		l.allow(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), t0)
		if len(l.buckets) > 3 {
			t.Fatalf("table grew to %d, bound 3", len(l.buckets))
		}
	}
}

// FuzzDNSFastPath feeds the read loop's hand-written parsers — the reply
// cache (reached with a records generation set and the cache primed) and
// the REFUSED builder — any datagram: no panic, and any reply carries
// the query's ID, fits its buffer and unpacks.
func FuzzDNSFastPath(f *testing.F) {
	recs := []shoal.Record{{Service: "web", Node: "n1", Addr: "10.9.0.1", PortName: "http", Port: 20000, Healthy: true}}
	d := NewDNS(DNSConfig{BalancerAddr: "127.0.0.9", Upstreams: []string{}, Generation: func() uint64 { return 7 }, Logger: quiet}, func() []shoal.Record { return recs })
	for _, q := range []struct {
		name  string
		qtype uint16
		edns  uint16
	}{{"web.service.shoal.", dns.TypeA, 0}, {"web.service.shoal.", dns.TypeA, 1232}, {"WEB.shoal.", dns.TypeA, 0}, {"nope.shoal.", dns.TypeAAAA, 4096}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		if q.edns > 0 {
			m.SetEdns0(q.edns, false)
		}
		d.serve(&captureWriter{}, m) // primes the cache
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, q []byte) {
		out := make([]byte, batchBuf)
		if reply, _, ok := d.cachedUDP(q, out, make([]byte, 0, 256)); ok {
			if len(reply) < 12 || reply[0] != q[0] || reply[1] != q[1] {
				t.Fatalf("cached reply without the query's ID: %x to %x", reply, q)
			}
			if err := new(dns.Msg).Unpack(reply); err != nil {
				t.Fatalf("cached reply does not unpack: %v", err)
			}
		}
		if reply, ok := refusal(q, out); ok {
			m := new(dns.Msg)
			if err := m.Unpack(reply); err != nil {
				t.Fatalf("refusal does not unpack: %v (%x)", err, reply)
			}
			if m.Id != uint16(q[0])<<8|uint16(q[1]) || !m.Response || m.Rcode != dns.RcodeRefused || len(reply) > len(q) || len(m.Answer)+len(m.Ns)+len(m.Extra) != 0 {
				t.Fatalf("refusal %v to %x", m, q)
			}
		}
	})
}
