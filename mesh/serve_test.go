package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startUpstream runs a second DNS server on loopback that answers every A
// query with 192.0.2.7, standing in for the host's resolver.
func startUpstream(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.7")})
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

func startDNS(t *testing.T, recs func() []shoal.Record) string {
	t.Helper()
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", BalancerAddr: "127.0.0.9", Upstreams: []string{startUpstream(t)}, Logger: quiet,
		Services: func() []string { return []string{"idle"} }}, recs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-d.Ready()
	return d.Addr()
}

func query(t *testing.T, addr, name string, qtype uint16, network string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	in, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return in
}

func TestDNS(t *testing.T) {
	var recs []shoal.Record
	for i := 0; i < 3; i++ {
		recs = append(recs, shoal.Record{Service: "web", Slot: i, Node: fmt.Sprintf("n%d", i), Addr: fmt.Sprintf("10.1.0.%d", i+1), PortName: "http", Port: 20000 + i, Healthy: i != 2})
	}
	recs = append(recs, shoal.Record{Service: "down", Slot: 0, Node: "n0", Addr: "10.1.0.1", PortName: "http", Port: 20009})
	// 40 healthy instances of "big" overflow a 512-byte UDP answer.
	for i := 0; i < 40; i++ {
		recs = append(recs, shoal.Record{Service: "big", Slot: i, Node: fmt.Sprintf("b%02d", i), Addr: fmt.Sprintf("10.2.0.%d", i+1), PortName: "main", Port: 21000 + i, Healthy: true})
	}
	addr := startDNS(t, func() []shoal.Record { return recs })

	in := query(t, addr, "web.service.shoal.", dns.TypeA, "udp")
	var ips []string
	for _, rr := range in.Answer {
		ips = append(ips, rr.(*dns.A).A.String())
	}
	if in.Rcode != dns.RcodeSuccess || strings.Join(ips, ",") != "10.1.0.1,10.1.0.2" || in.Answer[0].Header().Ttl != 5 {
		t.Errorf("A: rcode %d answers %v (unhealthy n2 must be left out)", in.Rcode, ips)
	}

	in = query(t, addr, "_http._tcp.web.service.shoal.", dns.TypeSRV, "udp")
	if len(in.Answer) != 2 || len(in.Extra) != 2 {
		t.Fatalf("SRV: %v", in)
	}
	srv := in.Answer[0].(*dns.SRV)
	if srv.Port != 20000 || srv.Target != "n0.node.shoal." || in.Extra[0].(*dns.A).A.String() != "10.1.0.1" {
		t.Errorf("SRV answer %v extra %v", srv, in.Extra[0])
	}

	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
		n     int
	}{
		{"web.service.shoal.", dns.TypeAAAA, dns.RcodeSuccess, 0}, // NODATA: v4 only
		{"down.service.shoal.", dns.TypeA, dns.RcodeSuccess, 0},   // NODATA: no healthy instance
		{"idle.service.shoal.", dns.TypeA, dns.RcodeSuccess, 0},   // NODATA: in the spec, nothing running
		{"nope.service.shoal.", dns.TypeA, dns.RcodeNameError, 0}, // NXDOMAIN
		{"_grpc._tcp.web.service.shoal.", dns.TypeSRV, dns.RcodeSuccess, 0},
		{"n1.node.shoal.", dns.TypeA, dns.RcodeSuccess, 1},
		{"ghost.node.shoal.", dns.TypeA, dns.RcodeNameError, 0},
		{"web.shoal.", dns.TypeA, dns.RcodeSuccess, 1}, // the balancer
		{"WEB.Service.Shoal.", dns.TypeA, dns.RcodeSuccess, 2},
	} {
		in := query(t, addr, tc.name, tc.qtype, "udp")
		if in.Rcode != tc.rcode || len(in.Answer) != tc.n {
			t.Errorf("%s %s: rcode %s, %d answers; want %s, %d", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[in.Rcode], len(in.Answer), dns.RcodeToString[tc.rcode], tc.n)
		}
		if tc.n == 0 && len(in.Ns) == 0 {
			t.Errorf("%s: negative answer without SOA", tc.name)
		}
	}
	if in := query(t, addr, "web.shoal.", dns.TypeA, "udp"); in.Answer[0].(*dns.A).A.String() != "127.0.0.9" {
		t.Errorf("web.shoal = %v", in.Answer[0])
	}

	// Forwarded outside .shoal.
	if in := query(t, addr, "example.org.", dns.TypeA, "udp"); len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
		t.Errorf("forward: %v", in)
	}

	// Truncated over UDP, complete over TCP.
	in = query(t, addr, "big.service.shoal.", dns.TypeA, "udp")
	if !in.Truncated {
		t.Errorf("40 answers fit in 512 bytes? %d answers", len(in.Answer))
	}
	if in := query(t, addr, "big.service.shoal.", dns.TypeA, "tcp"); in.Truncated || len(in.Answer) != 40 {
		t.Errorf("TCP: truncated=%v answers=%d", in.Truncated, len(in.Answer))
	}
}

// backends starts n HTTP servers that say which one answered.
func backends(t *testing.T, n int) []*httptest.Server {
	var out []*httptest.Server
	for i := 0; i < n; i++ {
		i := i
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "b%d", i) }))
		t.Cleanup(s.Close)
		out = append(out, s)
	}
	return out
}

// deadRecord is a record of a port nothing listens on.
func deadRecord(t *testing.T, slot int, node string) shoal.Record {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return shoal.Record{Service: "web", Slot: slot, Node: node, Addr: "127.0.0.1", PortName: "http", Port: port, Healthy: true}
}

func recordFor(s *httptest.Server, slot int, node string) shoal.Record {
	host, port, _ := net.SplitHostPort(strings.TrimPrefix(s.URL, "http://"))
	p, _ := strconv.Atoi(port)
	return shoal.Record{Service: "web", Slot: slot, Node: node, Addr: host, PortName: "http", Port: p, Healthy: true}
}

func TestBalancer(t *testing.T) {
	bs := backends(t, 4)
	var mu sync.Mutex
	recs := []shoal.Record{recordFor(bs[0], 0, "n1"), recordFor(bs[1], 1, "n2"), recordFor(bs[2], 2, "n3")}
	src := func() []shoal.Record { mu.Lock(); defer mu.Unlock(); return append([]shoal.Record(nil), recs...) }
	lb := NewBalancer(BalancerConfig{ListenHost: "127.0.0.1", LocalNode: "elsewhere", Logger: quiet}, src)
	t.Cleanup(func() { lb.Close() })
	port := freeUDPTCPPort(t)
	lb.SetRoutes([]Route{{Service: "web", PortName: "http", Port: port}})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	get := func() (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	// Spread across all three.
	counts := map[string]int{}
	for i := 0; i < 300; i++ {
		body, err := get()
		if err != nil {
			t.Fatal(err)
		}
		counts[body]++
	}
	for _, b := range []string{"b0", "b1", "b2"} {
		if counts[b] < 40 {
			t.Errorf("%s got %d of 300: %v", b, counts[b], counts)
		}
	}

	// A record at a closed port beside a live one: every connection still
	// succeeds, through a refused dial retried on the live instance.
	dead := deadRecord(t, 9, "n9")
	mu.Lock()
	recs = []shoal.Record{dead, recordFor(bs[0], 0, "n1")}
	mu.Unlock()
	before := lb.Stats()["web"].DialFailures
	for i := 0; i < 20; i++ {
		if body, err := get(); err != nil || body != "b0" {
			t.Fatalf("request %d with a dead instance listed: %q, %v", i, body, err)
		}
	}
	if n := lb.Stats()["web"].DialFailures - before; n == 0 {
		t.Errorf("no refused dial counted with a closed port listed first")
	}
	mu.Lock()
	recs = []shoal.Record{recordFor(bs[0], 0, "n1"), recordFor(bs[1], 1, "n2"), recordFor(bs[2], 2, "n3")}
	mu.Unlock()

	// Kill one backend mid-load: its record goes away shortly after (as
	// health checks would see). Only requests in flight on it at that
	// moment may fail — at most one per worker — because a refused dial is
	// retried on another instance.
	var failed, ok atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopLoad := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	defer stopLoad()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := get(); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	served := func(n int64) func() bool { return func() bool { return ok.Load() >= n } }
	waitFor(t, 10*time.Second, "100 requests served before the kill", served(100))
	dialFailures := lb.Stats()["web"].DialFailures
	bs[1].Close()
	// Its record is still listed: dials to it are refused and retried.
	waitFor(t, 10*time.Second, "a refused dial to the killed backend", func() bool {
		return lb.Stats()["web"].DialFailures > dialFailures
	})
	waitFor(t, 10*time.Second, "100 more requests served with the dead backend listed", served(ok.Load()+100))
	mu.Lock()
	recs = []shoal.Record{recordFor(bs[0], 0, "n1"), recordFor(bs[2], 2, "n3")}
	mu.Unlock()
	deadAddr := backendAddr(recordFor(bs[1], 1, "n2"))
	waitFor(t, 10*time.Second, "the balancer to drop the killed backend", func() bool {
		return !slices.ContainsFunc(lb.candidates(Route{Service: "web", PortName: "http", Port: port}), func(c candidate) bool { return c.addr == deadAddr })
	})
	waitFor(t, 10*time.Second, "100 more requests served after the record went", served(ok.Load()+100))
	stopLoad()
	if n := failed.Load(); n > 4 {
		t.Errorf("%d requests failed while a backend died (of %d); at most the 4 in flight may", n, n+ok.Load())
	}
	t.Logf("backend killed under load: %d requests ok, %d failed (in flight), %d dials refused and retried",
		ok.Load(), failed.Load(), lb.Stats()["web"].DialFailures-dialFailures)

	// A new backend gets traffic.
	mu.Lock()
	recs = append(recs, recordFor(bs[3], 3, "n4"))
	mu.Unlock()
	counts = map[string]int{}
	for i := 0; i < 150; i++ {
		body, _ := get()
		counts[body]++
	}
	if counts["b3"] == 0 || counts["b1"] != 0 {
		t.Errorf("after changes: %v", counts)
	}

	// A balancer on a node with an instance of its own still spreads over
	// every instance (traffic entering one node must reach the others),
	// and dials its own instance at the record's Local address, not at
	// the node address and host port peers use.
	local := recordFor(bs[2], 2, "n3")
	local.Local = strings.TrimPrefix(bs[3].URL, "http://") // the "container address"
	src2 := func() []shoal.Record { return []shoal.Record{recordFor(bs[0], 0, "n1"), local} }
	lb2 := NewBalancer(BalancerConfig{ListenHost: "127.0.0.1", LocalNode: "n3", Logger: quiet}, src2)
	t.Cleanup(func() { lb2.Close() })
	port2 := freeUDPTCPPort(t)
	lb2.SetRoutes([]Route{{Service: "web", PortName: "http", Port: port2}})
	counts = map[string]int{}
	for i := 0; i < 200; i++ {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port2))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		counts[string(b)]++
	}
	if counts["b2"] != 0 || counts["b3"] < 50 || counts["b0"] < 50 {
		t.Errorf("from n3, 200 requests: %v; want b0 and b3 (n3's instance at its Local address) about evenly, never b2", counts)
	}
	st := lb.Stats()["web"]
	if st.Connections < 450 || st.BytesOut == 0 || st.Rate <= 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestBalancerQueuesWhileNoInstance: a connection that arrives while a
// service has no healthy instance waits for one instead of being reset,
// and gives up after QueueTimeout when none comes.
func TestBalancerQueuesWhileNoInstance(t *testing.T) {
	bs := backends(t, 1)
	var mu sync.Mutex
	var recs []shoal.Record
	src := func() []shoal.Record { mu.Lock(); defer mu.Unlock(); return append([]shoal.Record(nil), recs...) }
	lb := NewBalancer(BalancerConfig{ListenHost: "127.0.0.1", LocalNode: "n1", QueueTimeout: 2 * time.Second, Logger: quiet}, src)
	t.Cleanup(func() { lb.Close() })
	port := freeUDPTCPPort(t)
	lb.SetRoutes([]Route{{Service: "web", PortName: "http", Port: port}})
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)

	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := client.Get(url)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{string(b), err}
	}()
	// The request is queued: nothing answers it while there is no record.
	select {
	case r := <-got:
		t.Fatalf("answered with no instance: %q, %v", r.body, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	mu.Lock()
	recs = []shoal.Record{recordFor(bs[0], 0, "n2")}
	mu.Unlock()
	select {
	case r := <-got:
		if r.err != nil || r.body != "b0" {
			t.Fatalf("queued request: %q, %v", r.body, r.err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("queued request not forwarded once an instance appeared")
	}

	// With none ever coming, the wait is bounded.
	mu.Lock()
	recs = nil
	mu.Unlock()
	t0 := time.Now()
	if _, err := client.Get(url); err == nil {
		t.Fatal("a request with no instance succeeded")
	}
	if took := time.Since(t0); took < 1500*time.Millisecond || took > 4*time.Second {
		t.Errorf("gave up after %v, want about the 2s queue timeout", took)
	}
}

// TestDNSCache: with a Generation, replies are cached — from the second
// query on, the UDP fast path answers without unpacking — and stay right:
// the ID and the name's case are the asker's, EDNS is echoed, and a new
// generation brings the new records at once.
func TestDNSCache(t *testing.T) {
	var mu sync.Mutex
	var gen uint64 = 1
	recs := []shoal.Record{{Service: "web", Slot: 0, Node: "n1", Addr: "10.1.0.1", PortName: "http", Port: 20000, Healthy: true}}
	src := func() []shoal.Record { mu.Lock(); defer mu.Unlock(); return append([]shoal.Record(nil), recs...) }
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", BalancerAddr: "127.0.0.9", Upstreams: []string{startUpstream(t)}, Logger: quiet,
		Generation: func() uint64 { mu.Lock(); defer mu.Unlock(); return gen }}, src)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-d.Ready()

	ask := func(name string, edns bool) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		if edns {
			m.SetEdns0(1232, false)
		}
		in, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, d.Addr())
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		if in.Id != m.Id || in.Question[0].Name != name {
			t.Errorf("reply id %d name %q to query id %d name %q", in.Id, in.Question[0].Name, m.Id, name)
		}
		if (in.IsEdns0() != nil) != edns {
			t.Errorf("%s: EDNS in reply %v, in query %v", name, in.IsEdns0() != nil, edns)
		}
		return in
	}
	addrs := func(in *dns.Msg) []string {
		var out []string
		for _, rr := range in.Answer {
			out = append(out, rr.(*dns.A).A.String())
		}
		return out
	}
	for _, name := range []string{"web.service.shoal.", "WeB.Service.shoal."} {
		for _, edns := range []bool{false, true} {
			for range 3 { // the first fills the cache, the others hit it
				if got := addrs(ask(name, edns)); !slices.Equal(got, []string{"10.1.0.1"}) {
					t.Errorf("%s (edns %v): %v", name, edns, got)
				}
			}
		}
	}
	mu.Lock()
	recs = append(recs, shoal.Record{Service: "web", Slot: 1, Node: "n2", Addr: "10.1.0.2", PortName: "http", Port: 20000, Healthy: true})
	mu.Unlock()
	// Same generation: the cached reply stands (the mesh bumps it with
	// every change, so this is only what an unchanged generation means).
	if got := addrs(ask("web.service.shoal.", false)); len(got) != 1 {
		t.Errorf("cached reply changed without a new generation: %v", got)
	}
	mu.Lock()
	gen++
	mu.Unlock()
	if got := addrs(ask("web.service.shoal.", false)); !slices.Equal(got, []string{"10.1.0.1", "10.1.0.2"}) {
		t.Errorf("after a new generation: %v, want both instances", got)
	}
	if got := addrs(ask("nope.example.", false)); !slices.Equal(got, []string{"192.0.2.7"}) {
		t.Errorf("forwarded name through the UDP reader: %v", got)
	}
	if st := d.Stats(); st["NOERROR"] < 15 {
		t.Errorf("stats %v: want every answer counted", st)
	}
}

// TestDNSUDPBurst: many queries in flight at once from several sockets —
// read and answered in batches on Linux — each get their own answer: the
// reply goes to the socket that asked, with its ID and its name, whether
// cached or not.
func TestDNSUDPBurst(t *testing.T) {
	var recs []shoal.Record
	for i := range 20 {
		recs = append(recs, shoal.Record{Service: fmt.Sprintf("svc%d", i), Slot: 0, Node: "n1",
			Addr: fmt.Sprintf("10.2.%d.1", i), PortName: "http", Port: 20000, Healthy: true})
	}
	d := NewDNS(DNSConfig{Addr: "127.0.0.1:0", BalancerAddr: "127.0.0.9", Upstreams: []string{startUpstream(t)}, Logger: quiet,
		Generation: func() uint64 { return 1 }}, func() []shoal.Record { return recs })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-d.Ready()

	// Each socket sends bursts of 32 (well within the sockets' buffers:
	// this is about batching, not about UDP loss) and then reads them.
	const sockets, bursts, burst = 4, 20, 32
	var wg sync.WaitGroup
	for s := range sockets {
		wg.Go(func() {
			conn, err := net.Dial("udp", d.Addr())
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			buf := make([]byte, 4096)
			for b := range bursts {
				want := map[uint16]int{} // ID → service index, -1 for a forwarded name
				for i := range burst {
					m := new(dns.Msg)
					m.SetQuestion(fmt.Sprintf("svc%d.service.shoal.", i%20), dns.TypeA)
					svc := i % 20
					if i == burst-1 {
						m.SetQuestion("nope.example.", dns.TypeA) // the slow path
						svc = -1
					}
					m.Id = uint16(s<<12 | b<<6 | i)
					want[m.Id] = svc
					p, _ := m.Pack()
					if _, err := conn.Write(p); err != nil {
						t.Error(err)
						return
					}
				}
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				for len(want) > 0 {
					n, err := conn.Read(buf)
					if err != nil {
						t.Errorf("socket %d burst %d: %d replies missing: %v", s, b, len(want), err)
						return
					}
					in := new(dns.Msg)
					if err := in.Unpack(buf[:n]); err != nil {
						t.Errorf("socket %d: bad reply: %v", s, err)
						continue
					}
					svc, ok := want[in.Id]
					if !ok {
						t.Errorf("socket %d: reply with ID %d it did not ask (or twice)", s, in.Id)
						continue
					}
					delete(want, in.Id)
					wantName, wantAddr := fmt.Sprintf("svc%d.service.shoal.", svc), fmt.Sprintf("10.2.%d.1", svc)
					if svc < 0 {
						wantName, wantAddr = "nope.example.", "192.0.2.7"
					}
					if len(in.Question) != 1 || in.Question[0].Name != wantName || len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != wantAddr {
						t.Errorf("socket %d: ID %d answered %v, want %s → %s", s, in.Id, in.Answer, wantName, wantAddr)
					}
				}
			}
		})
	}
	wg.Wait()
	if st := d.Stats(); st["NOERROR"] != sockets*bursts*burst {
		t.Errorf("stats %v, want %d answers", st, sockets*bursts*burst)
	}
}

// TestDNSPortTaken: a DNS whose UDP port is served by a socket group
// (SO_REUSEPORT) still makes a second server on the same address fail to
// bind, instead of joining the group and taking part of the queries.
func TestDNSPortTaken(t *testing.T) {
	first := NewDNS(DNSConfig{Addr: "127.0.0.1:0", Upstreams: []string{}, Logger: quiet}, func() []shoal.Record { return nil })
	if err := first.Listen(); err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if len(first.pcs) != udpSockets {
		t.Errorf("%d UDP sockets, want %d", len(first.pcs), udpSockets)
	}
	second := NewDNS(DNSConfig{Addr: first.Addr(), Upstreams: []string{}, Logger: quiet}, func() []shoal.Record { return nil })
	if err := second.Listen(); err == nil {
		second.Close()
		t.Fatalf("a second server bound %s", first.Addr())
	} else if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("second bind: %v, want address already in use", err)
	}
}

// TestDNSGroupSpreadsOneSender: the datagrams of a single sender (one
// address and port, which the kernel's hash would send to one socket
// only) reach every socket of the group, so every reader takes a share.
func TestDNSGroupSpreadsOneSender(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_REUSEPORT groups are Linux-only here")
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	group, err := reusePortGroup(pc.(*net.UDPConn), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range group {
			c.Close()
		}
	}()
	if len(group) != 2 {
		t.Fatalf("%d sockets, want 2", len(group))
	}
	if err := spreadGroup(group[0], len(group)); err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("udp", group[0].LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const sent = 64
	for i := range sent {
		if _, err := client.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]int, len(group))
	buf := make([]byte, 16)
	for total := 0; total < sent; {
		progress := false
		for i, c := range group {
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := c.Read(buf); err == nil {
				got[i]++
				total++
				progress = true
			}
		}
		if !progress {
			t.Fatalf("only %d of %d datagrams arrived (%v)", total, sent, got)
		}
	}
	for i, n := range got {
		if n == 0 {
			t.Errorf("socket %d got none of one sender's %d datagrams (%v): spread by hash", i, sent, got)
		}
	}
}

// TestUDPBatch: both batch readers (raw recvmmsg/sendmmsg on Linux, and
// golang.org/x/net's, which other systems use) read what senders sent,
// flag an oversized datagram as truncated, name each sender, and send
// each reply back to its own sender — over IPv4 and IPv6.
func TestUDPBatch(t *testing.T) {
	kinds := map[string]func(*net.UDPConn) (udpBatch, error){
		"os":       newUDPBatch,
		"portable": func(uc *net.UDPConn) (udpBatch, error) { return newMsgBatch(uc), nil },
	}
	for kind, newBatch := range kinds {
		for _, host := range []string{"127.0.0.1", "::1"} {
			t.Run(kind+"/"+host, func(t *testing.T) {
				pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
				if err != nil {
					t.Skip("no loopback for", host)
				}
				defer pc.Close()
				b, err := newBatch(pc.(*net.UDPConn))
				if err != nil {
					t.Fatal(err)
				}
				var clients []net.Conn
				for i := range 3 {
					c, err := net.Dial("udp", pc.LocalAddr().String())
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					clients = append(clients, c)
					msg := []byte(fmt.Sprintf("query %d", i))
					if i == 2 {
						msg = make([]byte, batchBuf+1) // does not fit: truncated
					}
					if _, err := c.Write(msg); err != nil {
						t.Fatal(err)
					}
				}
				pc.SetReadDeadline(time.Now().Add(5 * time.Second))
				got, truncated, replies := 0, 0, 0
				for got+truncated < 3 {
					n, err := b.recv()
					if err != nil {
						t.Fatalf("recv after %d datagrams: %v", got+truncated, err)
					}
					for i := range n {
						q := b.query(i)
						if q == nil {
							truncated++
							continue
						}
						got++
						if from := b.from(i); from == nil || !strings.HasPrefix(string(q), "query ") {
							t.Fatalf("datagram %q from %v", q, from)
						}
						reply := append(b.replyBuf(replies)[:0], "answer to "...)
						b.setReply(replies, i, append(reply, q...))
						replies++
					}
				}
				if got != 2 || truncated != 1 {
					t.Fatalf("%d datagrams, %d truncated; want 2 and 1", got, truncated)
				}
				if err := b.send(replies); err != nil {
					t.Fatal(err)
				}
				for i, c := range clients[:2] {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					buf := make([]byte, 64)
					n, err := c.Read(buf)
					if want := fmt.Sprintf("answer to query %d", i); err != nil || string(buf[:n]) != want {
						t.Errorf("client %d: %q, %v; want %q", i, buf[:n], err, want)
					}
				}
			})
		}
	}
}
