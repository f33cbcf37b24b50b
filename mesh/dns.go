package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

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
	pc      net.PacketConn
	ln      net.Listener
	servers []*dns.Server
	stats   map[string]uint64
	ready   chan struct{}
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
	return &DNS{cfg: cfg, src: src, log: cfg.Logger, stats: map[string]uint64{}, ready: make(chan struct{})}
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
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]uint64, len(d.stats))
	for k, v := range d.stats {
		out[k] = v
	}
	return out
}

// Listen binds the UDP and TCP sockets now, so a caller learns at once
// whether the address is free; Run calls it when nobody has.
func (d *DNS) Listen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pc != nil {
		return nil
	}
	pc, err := net.ListenPacket("udp", d.cfg.Addr)
	if err != nil {
		return fmt.Errorf("dns: listen udp %s: %w", d.cfg.Addr, err)
	}
	// TCP on the same port as UDP, for truncated answers.
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: listen tcp %s: %w", pc.LocalAddr(), err)
	}
	d.pc, d.ln, d.addr = pc, ln, pc.LocalAddr().String()
	return nil
}

// Run serves until ctx is cancelled.
func (d *DNS) Run(ctx context.Context) error {
	if err := d.Listen(); err != nil {
		return err
	}
	d.mu.Lock()
	pc, ln := d.pc, d.ln
	d.mu.Unlock()
	h := dns.HandlerFunc(d.serve)
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	d.mu.Lock()
	d.servers = []*dns.Server{udp, tcp}
	d.mu.Unlock()
	close(d.ready)
	d.log.Info("dns listening", "addr", d.addr)
	errc := make(chan error, 2)
	var err error
	go func() { errc <- udp.ActivateAndServe() }()
	go func() { errc <- tcp.ActivateAndServe() }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	udp.Shutdown()
	tcp.Shutdown()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("dns: %w", err)
}

func (d *DNS) count(rcode int) {
	d.mu.Lock()
	d.stats[dns.RcodeToString[rcode]]++
	d.mu.Unlock()
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		w.WriteMsg(m)
		d.count(dns.RcodeFormatError)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(zone, name) {
		d.forward(w, req)
		return
	}
	m := d.answer(req, name, q.Qtype)
	// Truncate to what the client takes over UDP; it retries over TCP.
	size := dns.MinMsgSize
	if o := req.IsEdns0(); o != nil {
		size = int(o.UDPSize())
	}
	if _, isTCP := w.RemoteAddr().(*net.TCPAddr); !isTCP {
		m.Truncate(size)
	}
	w.WriteMsg(m)
	d.count(m.Rcode)
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
		known[r.Service] = true
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
				if ip := net.ParseIP(r.Addr); ip != nil && ip.To4() != nil {
					m.Extra = append(m.Extra, &dns.A{Hdr: hdr(target, dns.TypeA), A: ip.To4()})
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
	c := &dns.Client{Timeout: 2 * time.Second}
	if isTCP {
		c.Net = "tcp"
	}
	var lastErr error = errors.New("no upstream resolvers")
	for _, up := range d.cfg.Upstreams {
		resp, _, err := c.Exchange(req, up)
		if err == nil {
			w.WriteMsg(resp)
			d.count(resp.Rcode)
			return
		}
		lastErr = err
	}
	d.log.Debug("forward", "name", req.Question[0].Name, "err", lastErr)
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	w.WriteMsg(m)
	d.count(dns.RcodeServerFailure)
}

// Close releases the sockets of a DNS that Listened but will not Run;
// Run releases its own when its context ends.
func (d *DNS) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.servers != nil || d.pc == nil {
		return nil
	}
	d.ln.Close()
	return d.pc.Close()
}
