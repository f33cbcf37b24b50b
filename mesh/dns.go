package mesh

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/shoal-run/shoal"
)

// DNSConfig configures the DNS server.
type DNSConfig struct {
	// Addr to serve UDP and TCP on; default 127.0.0.1:8600.
	Addr string
	// BalancerAddr is the address <service>.shoal answers: this node's
	// balancer, a name that does not change as replicas move.
	BalancerAddr string
	// Upstreams (host:port) answer names outside .shoal; default the
	// nameservers of /etc/resolv.conf.
	Upstreams []string
	// TTL of answers; short, because instances move. Default 5s.
	TTL    time.Duration
	Logger *slog.Logger
	// Services lists the services of the spec, so a service without a
	// healthy instance answers NODATA rather than NXDOMAIN. Optional.
	Services func() []string
	// Generation, when set, changes whenever the records do (Mesh's
	// Generation): replies are then cached while it stays the same, for
	// at most a second. Without it every query walks the records.
	Generation func() uint64
	// AllowedSources, when set, are the only source addresses answered;
	// any other gets REFUSED. The DNS that containers use sets it to the
	// container subnet and the node's own addresses, so that it is no
	// open resolver. Nil answers every source (a DNS on loopback).
	AllowedSources []netip.Prefix
	// MaxInflight bounds the queries answered outside the read loop
	// (forwarded, or not in the reply cache) at once; beyond it a query
	// gets SERVFAIL at once. Default 256.
	MaxInflight int
	// RateLimit is the replies per second one source address gets, with
	// bursts of twice that; beyond it queries are dropped, so the server
	// cannot be made to reflect traffic at a spoofed address. 0: no limit.
	RateLimit float64
}

// DNS answers <service>.service.shoal (A/AAAA), _<port>._tcp.<service>.
// service.shoal (SRV), <node>.node.shoal and <service>.shoal from the
// records, and forwards other names.
type DNS struct {
	cfg DNSConfig
	src func() []shoal.Record
	log *slog.Logger

	mu      sync.Mutex
	addr    string
	pcs     []*net.UDPConn // one, or a SO_REUSEPORT group
	ln      net.Listener
	servers []*dns.Server
	stats   [32]atomic.Uint64 // answers by rcode
	ready   chan struct{}

	cacheMu sync.RWMutex
	cache   map[string]map[cacheKey]cachedReply // by name as asked, case preserved

	slots   chan struct{} // MaxInflight: queries answered outside the read loop
	limiter *rateLimiter  // nil without RateLimit
	ups     *upstreams
	limited atomic.Uint64 // queries dropped by the rate limit
}

// Replies inside .shoal are kept, packed, while the records' generation
// stays the same and for at most cacheFor (which bounds how long a change
// of the spec's service names goes unseen): a burst of queries for a name
// costs one walk over the records and one packing.
const cacheFor = time.Second

// cacheKey is everything of a query its packed reply depends on, but the
// ID and the name: type, flags echoed back, EDNS buffer size (0 without
// EDNS) and transport.
type cacheKey struct {
	qtype  uint16
	rd, cd bool
	edns   int
	tcp    bool
}

type cachedReply struct {
	packed  []byte
	rcode   int
	gen     uint64
	expires time.Time
}

const zone = "shoal."

// NewDNS makes a DNS server answering from src.
func NewDNS(cfg DNSConfig, src func() []shoal.Record) *DNS {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:8600"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = systemResolvers("/etc/resolv.conf")
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 256
	}
	d := &DNS{cfg: cfg, src: src, log: cfg.Logger, ready: make(chan struct{}), slots: make(chan struct{}, cfg.MaxInflight), ups: newUpstreams()}
	if cfg.RateLimit > 0 {
		d.limiter = newRateLimiter(cfg.RateLimit, 2*cfg.RateLimit, maxLimited)
	}
	return d
}

// systemResolvers reads the nameservers of a resolv.conf.
func systemResolvers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			out = append(out, net.JoinHostPort(fields[1], "53"))
		}
	}
	return out
}

// Addr is the address actually bound (useful with port 0), after Ready.
func (d *DNS) Addr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.addr
}

// Ready is closed once the server listens.
func (d *DNS) Ready() <-chan struct{} { return d.ready }

// Stats counts answers by response code.
func (d *DNS) Stats() map[string]uint64 {
	out := map[string]uint64{}
	for rcode := range d.stats {
		if n := d.stats[rcode].Load(); n > 0 {
			out[dns.RcodeToString[rcode]] = n
		}
	}
	if n := d.limited.Load(); n > 0 {
		out["RATELIMITED"] = n
	}
	return out
}

// Listen binds the UDP and TCP sockets now, so a caller learns at once
// whether the address is free; Run calls it when nobody has.
func (d *DNS) Listen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pcs != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(d.cfg.Addr)
	for try := 1; ; try++ {
		pc, err := net.ListenPacket("udp", d.cfg.Addr)
		if err != nil {
			return fmt.Errorf("dns: listen udp %s: %w", d.cfg.Addr, err)
		}
		// TCP on the same port as UDP, for truncated answers.
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			if port == "0" && try < 10 {
				continue // the port picked for UDP is taken for TCP: pick another
			}
			return fmt.Errorf("dns: listen tcp %s: %w", pc.LocalAddr(), err)
		}
		pcs, err := reusePortGroup(pc.(*net.UDPConn), udpSockets)
		if err != nil {
			ln.Close()
			return fmt.Errorf("dns: listen udp %s: %w", pc.LocalAddr(), err)
		}
		if len(pcs) > 1 {
			if err := spreadGroup(pcs[0], len(pcs)); err != nil {
				// The hash still spreads many senders well: go on.
				d.log.Warn("dns: datagrams spread by sender, not at random", "err", err)
			}
		}
		d.pcs, d.ln, d.addr = pcs, ln, pc.LocalAddr().String()
		return nil
	}
}

// reusePortGroup replaces pc, bound without SO_REUSEPORT (which proved
// the port free: a second daemon's plain bind then fails, rather than
// joining the group and silently taking half the queries), with n
// sockets bound to the same address with SO_REUSEPORT, a queue and a
// reader each, as unbound does; the kernel spreads datagrams over them at
// random (spreadGroup). Where that cannot be, it is pc alone.
func reusePortGroup(pc *net.UDPConn, n int) ([]*net.UDPConn, error) {
	if n < 2 || goruntime.GOOS != "linux" {
		return []*net.UDPConn{pc}, nil
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	var group []*net.UDPConn
	for range n {
		c, err := reusePort.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, g := range group {
				g.Close()
			}
			// Someone took the port in between, or the option is
			// refused: bind it plainly again, which says which.
			c, err := net.ListenPacket("udp", addr)
			if err != nil {
				return nil, err
			}
			return []*net.UDPConn{c.(*net.UDPConn)}, nil
		}
		group = append(group, c.(*net.UDPConn))
	}
	return group, nil
}

// reusePort makes sockets that share their port (SO_REUSEPORT). Bind the
// port plainly first, to prove it free: a group does not refuse another
// process's.
var reusePort = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}}

// Run serves until ctx is cancelled.
func (d *DNS) Run(ctx context.Context) error {
	if err := d.Listen(); err != nil {
		return err
	}
	d.mu.Lock()
	pcs, ln := d.pcs, d.ln
	d.mu.Unlock()
	h := dns.HandlerFunc(d.serveTCP)
	tcp := &dns.Server{Listener: ln, Handler: h}
	d.mu.Lock()
	d.servers = []*dns.Server{tcp}
	d.mu.Unlock()
	close(d.ready)
	d.log.Info("dns listening", "addr", d.addr, "udp_sockets", len(pcs))
	readers := max(1, udpSockets/len(pcs))
	errc := make(chan error, 1+readers*len(pcs))
	var err error
	var wg sync.WaitGroup
	for _, pc := range pcs {
		for range readers {
			wg.Add(1)
			go func() { defer wg.Done(); errc <- d.readUDP(pc) }()
		}
	}
	go func() { errc <- tcp.ActivateAndServe() }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, pc := range pcs {
		pc.Close()
	}
	tcp.Shutdown()
	wg.Wait()
	d.ups.close()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("dns: %w", err)
}

// udpSockets is how many UDP sockets share the port (SO_REUSEPORT), and
// how many readers there are in all.
var udpSockets = goruntime.GOMAXPROCS(0)

// Batches of the read loop: up to batchLen queries per recvmmsg and
// replies per sendmmsg (one at a time where there are no such calls),
// each in a buffer of batchBuf bytes. A query that does not fit (the
// kernel flags it truncated) is dropped, as a server with a 4 KiB
// receive buffer would; queries are tens of bytes. A reply that does not
// fit goes the slow way.
const (
	batchLen = 32
	batchBuf = 4096
)

// udpBatch reads datagrams and writes replies a batch at a time; raw
// recvmmsg and sendmmsg on Linux (dnsbatch_linux.go), golang.org/x/net's
// batches elsewhere (dnsbatch.go).
type udpBatch interface {
	recv() (int, error)              // reads datagrams 0..n-1, waiting while there are none
	query(i int) []byte              // datagram i; nil when it was truncated
	replyBuf(j int) []byte           // room for reply j, batchBuf bytes
	setReply(j, i int, reply []byte) // reply j, in replyBuf(j), goes to datagram i's sender
	from(i int) net.Addr             // datagram i's sender, for the slow path; nil if unknown
	source(i int) netip.Addr         // datagram i's sender's IP, without allocating; invalid if unknown
	send(n int) error                // writes replies 0..n-1
}

// readUDP answers queries from the socket until it is closed. A query
// whose reply is cached is answered right here, without unpacking it or
// starting a goroutine; any other goes through serve as miekg/dns would
// hand it over. Under load, one recvmmsg reads every waiting query and
// one sendmmsg sends every cached reply, instead of a system call and a
// netpoller wake-up for each.
func (d *DNS) readUDP(uc *net.UDPConn) error {
	b, err := newUDPBatch(uc)
	if err != nil {
		return err
	}
	name := make([]byte, 0, 256)
	for {
		n, err := b.recv()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		replies := 0
		now := time.Now()
		for i := range n {
			q := b.query(i)
			if q == nil {
				continue
			}
			src := b.source(i)
			if !d.admit(src, now) {
				continue
			}
			if !d.allowed(src) {
				if reply, ok := refusal(q, b.replyBuf(replies)); ok {
					d.count(dns.RcodeRefused)
					b.setReply(replies, i, reply)
					replies++
				}
				continue
			}
			if reply, rcode, ok := d.cachedUDP(q, b.replyBuf(replies), name[:0]); ok {
				d.count(rcode) // before the write: a client that got its answer sees it counted
				b.setReply(replies, i, reply)
				replies++
				continue
			}
			req := new(dns.Msg)
			if err := req.Unpack(q); err != nil || req.Response {
				continue // not a query: drop it, as miekg/dns does
			}
			addr := b.from(i)
			if addr == nil {
				continue
			}
			w := &udpWriter{pc: uc, addr: addr}
			select {
			case d.slots <- struct{}{}:
				go func() { // may forward: never block the reader
					defer func() { <-d.slots }()
					d.serve(w, req)
				}()
			default:
				d.busy(w, req)
			}
		}
		if err := b.send(replies); err != nil {
			d.log.Debug("dns write", "err", err) // the sender is gone or the buffer full: it retries, as over any UDP
		}
	}
}

// cachedUDP answers a plain query — one question with a simple name, no
// records but an optional OPT — from the cache, reading only the bytes it
// needs. ok is false for anything else.
// The reply is built in out; name is scratch space.
func (d *DNS) cachedUDP(q, out, name []byte) (reply []byte, rcode int, ok bool) {
	if d.cfg.Generation == nil || len(q) < 17 {
		return nil, 0, false
	}
	flags := binary.BigEndian.Uint16(q[2:])
	qd, an, ns, ar := binary.BigEndian.Uint16(q[4:]), binary.BigEndian.Uint16(q[6:]), binary.BigEndian.Uint16(q[8:]), binary.BigEndian.Uint16(q[10:])
	if flags&0x8000 != 0 || flags&0x7800 != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return nil, 0, false // a response, not opcode QUERY, or unusual sections
	}
	i := 12
	for {
		if i >= len(q) {
			return nil, 0, false
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l > 63 || i+l > len(q) {
			return nil, 0, false // compression pointer or garbage
		}
		for _, c := range q[i : i+l] {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return nil, 0, false // needs escaping: the slow path
			}
		}
		name = append(append(name, q[i:i+l]...), '.')
		i += l
	}
	if i+4 > len(q) || len(name) == 0 {
		return nil, 0, false
	}
	key := cacheKey{qtype: binary.BigEndian.Uint16(q[i:]), rd: flags&0x0100 != 0, cd: flags&0x0010 != 0}
	if binary.BigEndian.Uint16(q[i+2:]) != dns.ClassINET {
		return nil, 0, false
	}
	i += 4
	if ar == 1 {
		// OPT: root name, type 41, class = UDP size, TTL, empty RDATA.
		if i+11 != len(q) || q[i] != 0 || binary.BigEndian.Uint16(q[i+1:]) != dns.TypeOPT || binary.BigEndian.Uint16(q[i+9:]) != 0 {
			return nil, 0, false
		}
		key.edns = max(int(binary.BigEndian.Uint16(q[i+3:])), dns.MinMsgSize)
	} else if i != len(q) {
		return nil, 0, false
	}
	c, hit := d.cached(name, key)
	if !hit || c.gen != d.cfg.Generation() || !time.Now().Before(c.expires) || len(c.packed) > len(out) {
		return nil, 0, false
	}
	reply = out[:copy(out, c.packed)]
	copy(reply[:2], q[:2]) // the query's ID
	return reply, c.rcode, true
}

func (d *DNS) cached(name []byte, key cacheKey) (cachedReply, bool) {
	d.cacheMu.RLock()
	defer d.cacheMu.RUnlock()
	c, ok := d.cache[string(name)][key]
	return c, ok
}

func (d *DNS) remember(name string, key cacheKey, c cachedReply) {
	d.cacheMu.Lock()
	defer d.cacheMu.Unlock()
	if d.cache == nil || len(d.cache) >= 10000 {
		d.cache = map[string]map[cacheKey]cachedReply{} // bounded: names are few, cases many
	}
	if d.cache[name] == nil {
		d.cache[name] = map[cacheKey]cachedReply{}
	}
	d.cache[name][key] = c
}

// udpWriter is the dns.ResponseWriter of a query read by readUDP.
type udpWriter struct {
	pc   net.PacketConn
	addr net.Addr
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.pc.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return w.addr }
func (w *udpWriter) Write(b []byte) (int, error) {
	return w.pc.WriteTo(b, w.addr)
}
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}

func (d *DNS) count(rcode int) {
	if rcode >= 0 && rcode < len(d.stats) {
		d.stats[rcode].Add(1)
	}
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		d.count(dns.RcodeFormatError)
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(zone, name) {
		d.forward(w, req)
		return
	}
	_, isTCP := w.RemoteAddr().(*net.TCPAddr)
	key := cacheKey{qtype: q.Qtype, rd: req.RecursionDesired, cd: req.CheckingDisabled, tcp: isTCP}
	if req.IsEdns0() != nil {
		key.edns = udpSize(req)
	}
	now, gen, caching := time.Now(), uint64(0), d.cfg.Generation != nil
	if caching {
		gen = d.cfg.Generation()
	}
	c, ok := d.cached([]byte(q.Name), key)
	if caching && ok && c.gen == gen && now.Before(c.expires) {
		reply := make([]byte, len(c.packed))
		copy(reply, c.packed)
		binary.BigEndian.PutUint16(reply, req.Id)
		d.count(c.rcode) // before the write: a client that got its answer sees it counted
		w.Write(reply)
		return
	}
	m := d.answer(req, name, q.Qtype)
	if key.edns != 0 {
		// RFC 6891 §7: a query with an OPT record gets one back.
		m.SetEdns0(uint16(key.edns), false)
	}
	// Truncate to what the client takes over UDP; it retries over TCP.
	if !isTCP {
		m.Truncate(udpSize(req))
	}
	// Compressed even when it fits without (Truncate turns compression off
	// then): every record repeats the question's name, so three A records
	// take 84 bytes instead of 139. The reply is packed once and cached.
	m.Compress = true
	packed, err := m.Pack()
	if err != nil || !caching {
		d.count(m.Rcode)
		w.WriteMsg(m)
		return
	}
	d.remember(q.Name, key, cachedReply{packed: packed, rcode: m.Rcode, gen: gen, expires: now.Add(cacheFor)})
	d.count(m.Rcode)
	w.Write(packed)
}

// answer builds the reply for a name inside .shoal from the records.
func (d *DNS) answer(req *dns.Msg, name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	ttl := uint32(d.cfg.TTL / time.Second)
	hdr := func(n string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: n, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	labels := dns.SplitDomainName(strings.TrimSuffix(name, zone))
	records := d.src()
	known := map[string]bool{}
	for _, r := range records {
		if r.Port > 0 { // a record without a port is a job's run, no service
			known[r.Service] = true
		}
	}
	if d.cfg.Services != nil {
		for _, s := range d.cfg.Services() {
			known[s] = true
		}
	}
	addA := func(n, addr string) {
		ip := net.ParseIP(addr)
		switch {
		case ip == nil:
		case ip.To4() != nil && (qtype == dns.TypeA || qtype == dns.TypeANY):
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(n, dns.TypeA), A: ip.To4()})
		case ip.To4() == nil && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(n, dns.TypeAAAA), AAAA: ip})
		}
	}
	switch {
	case len(labels) == 2 && labels[1] == "service" && known[labels[0]]:
		// <service>.service.shoal: every node address with a healthy instance.
		seen := map[string]bool{}
		for _, r := range healthyOf(records, labels[0], "") {
			if !seen[r.Addr] {
				seen[r.Addr] = true
				addA(name, r.Addr)
			}
		}
	case len(labels) == 4 && strings.HasPrefix(labels[0], "_") && labels[1] == "_tcp" && labels[3] == "service" && known[labels[2]]:
		// _<port>._tcp.<service>.service.shoal: node and host port.
		if qtype == dns.TypeSRV || qtype == dns.TypeANY {
			for _, r := range healthyOf(records, labels[2], strings.TrimPrefix(labels[0], "_")) {
				target := r.Node + ".node." + zone
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr(name, dns.TypeSRV), Priority: 1, Weight: 1, Port: uint16(r.Port), Target: target})
				switch ip := net.ParseIP(r.Addr); {
				case ip == nil:
				case ip.To4() != nil:
					m.Extra = append(m.Extra, &dns.A{Hdr: hdr(target, dns.TypeA), A: ip.To4()})
				default:
					m.Extra = append(m.Extra, &dns.AAAA{Hdr: hdr(target, dns.TypeAAAA), AAAA: ip})
				}
			}
		}
	case len(labels) == 2 && labels[1] == "node":
		addr := ""
		for _, r := range records {
			if r.Node == labels[0] {
				addr = r.Addr
			}
		}
		if addr == "" {
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa()}
			return m
		}
		addA(name, addr)
	case len(labels) == 1 && known[labels[0]]:
		// <service>.shoal: this node's balancer, stable as replicas move.
		addA(name, d.cfg.BalancerAddr)
	case len(labels) == 0:
		// The zone's apex: its SOA, and no other record.
		if qtype == dns.TypeSOA || qtype == dns.TypeANY {
			rr := soa()
			rr.Header().Ttl = ttl
			m.Answer = append(m.Answer, rr)
		}
	case len(labels) == 1 && labels[0] == "service" && len(known) > 0,
		len(labels) == 1 && labels[0] == "node" && len(records) > 0,
		len(labels) == 3 && labels[0] == "_tcp" && labels[2] == "service" && known[labels[1]]:
		// Empty non-terminals: names with none of their own records
		// but names below them. They exist: NODATA, not NXDOMAIN
		// (RFC 8020), or a resolver would take everything below as gone.
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{soa()}
		return m
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{soa()} // NODATA: the name exists, no record of this type
	}
	return m
}

// udpSize is the largest UDP reply the sender of req takes.
func udpSize(req *dns.Msg) int {
	if o := req.IsEdns0(); o != nil {
		return max(int(o.UDPSize()), dns.MinMsgSize)
	}
	return dns.MinMsgSize
}

func soa() dns.RR {
	return &dns.SOA{Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 5},
		Ns: "ns." + zone, Mbox: "hostmaster." + zone, Serial: 1, Refresh: 60, Retry: 10, Expire: 600, Minttl: 5}
}

// healthyOf returns the healthy records of a service (and port name, if
// given), sorted for stable answers.
func healthyOf(records []shoal.Record, service, port string) []shoal.Record {
	var out []shoal.Record
	for _, r := range records {
		if r.Service == service && r.Healthy && (port == "" || r.PortName == port) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// forward relays a query for a name outside .shoal to the upstreams.
func (d *DNS) forward(w dns.ResponseWriter, req *dns.Msg) {
	_, isTCP := w.RemoteAddr().(*net.TCPAddr)
	var lastErr error = errors.New("no upstream resolvers")
	for _, up := range d.cfg.Upstreams {
		resp, err := d.ups.exchange(req, up, isTCP)
		if err == nil {
			if !isTCP {
				// The upstream fit its answer in the client's buffer
				// compressed: repacked, it must fit too.
				resp.Truncate(udpSize(req))
			}
			d.count(resp.Rcode)
			w.WriteMsg(resp)
			return
		}
		lastErr = err
	}
	d.log.Debug("forward", "name", req.Question[0].Name, "err", lastErr)
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	d.count(dns.RcodeServerFailure)
	w.WriteMsg(m)
}

// Close releases the sockets of a DNS that Listened but will not Run;
// Run releases its own when its context ends.
func (d *DNS) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.servers != nil || d.pcs == nil {
		return nil
	}
	d.ln.Close()
	var errs []error
	for _, pc := range d.pcs {
		errs = append(errs, pc.Close())
	}
	return errors.Join(errs...)
}
