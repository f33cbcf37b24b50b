package mesh

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shoal-run/shoal"
)

// tcpBackend serves every connection with handle on a loopback listener.
func tcpBackend(t *testing.T, network, addr string, handle func(net.Conn)) shoal.Record {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	ta := ln.Addr().(*net.TCPAddr)
	return shoal.Record{Service: "web", Node: "n1", Addr: ta.IP.String(), PortName: "tcp", Port: ta.Port, Healthy: true}
}

func startBalancer(t *testing.T, cfg BalancerConfig, recs ...shoal.Record) (*Balancer, string) {
	t.Helper()
	if cfg.ListenHost == "" {
		cfg.ListenHost = "127.0.0.1"
	}
	cfg.Logger = quiet
	lb := NewBalancer(cfg, func() []shoal.Record { return recs })
	t.Cleanup(func() { lb.Close() })
	port := freeUDPTCPPort(t)
	lb.SetRoutes([]Route{{Service: "web", PortName: "tcp", Port: port}})
	return lb, net.JoinHostPort(cfg.ListenHost, strconv.Itoa(port))
}

// dialLB connects to the balancer at addr; the connection is closed with
// the test and gives up after d.
func dialLB(t *testing.T, addr string, d time.Duration) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(d))
	return c.(*net.TCPConn)
}

func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestBalancerStreams moves data bigger than every socket buffer on the
// way, so the balancer must hold what a full peer cannot take and resume
// when it drains, and passes half-closes on in both directions.
func TestBalancerStreams(t *testing.T) {
	const size = 16 << 20
	data := pattern(size, 1)
	sum := sha256.Sum256(data)
	blocked := make(chan struct{}) // the download's backend cannot write more

	tests := []struct {
		name    string
		backend func(net.Conn)
		client  func(t *testing.T, c *net.TCPConn)
	}{{
		// The backend writes until a write times out: only then are its
		// send buffer, the balancer and the client's receive buffer
		// full. The client starts reading after that.
		name: "download to a reader that is not reading",
		backend: func(c net.Conn) {
			c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			n, err := c.Write(data)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return // all of it fit: the client fails the test
			}
			close(blocked)
			c.SetWriteDeadline(time.Time{})
			c.Write(data[n:])
		},
		client: func(t *testing.T, c *net.TCPConn) {
			select {
			case <-blocked:
			case <-time.After(20 * time.Second):
				t.Fatal("16 MiB went into the buffers without a reader")
			}
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read %d of %d bytes, equal %v, err %v", len(got), len(data), bytes.Equal(got, data), err)
			}
		},
	}, {
		name: "upload, half-close, then the answer",
		backend: func(c net.Conn) {
			h := sha256.New()
			n, err := io.Copy(h, c) // to the client's EOF, passed on as ours
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d %x", n, h.Sum(nil))
		},
		client: func(t *testing.T, c *net.TCPConn) {
			if _, err := c.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if want := fmt.Sprintf("%d %x", size, sum); err != nil || string(got) != want {
				t.Fatalf("answer %q, %v; want %q", got, err, want)
			}
		},
	}, {
		name:    "echo both ways at once",
		backend: func(c net.Conn) { io.Copy(c, c) },
		client: func(t *testing.T, c *net.TCPConn) {
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(data)
				if err == nil {
					err = c.CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("echoed %d of %d bytes, err %v", len(got), len(data), err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := tcpBackend(t, "tcp", "127.0.0.1:0", tt.backend)
			lb, addr := startBalancer(t, BalancerConfig{}, rec)
			c := dialLB(t, addr, 30*time.Second)
			tt.client(t, c)
			c.Close()
			waitFor(t, 5*time.Second, "the connection closed on the balancer", func() bool { return lb.Stats()["web"].Active == 0 })
			if st := lb.Stats()["web"]; st.BytesIn+st.BytesOut < size {
				t.Errorf("counted %d bytes in, %d out for %d", st.BytesIn, st.BytesOut, size)
			}
		})
	}
}

// blackhole is a listener whose accept queue is full, so a connect to it
// neither completes nor fails: the dial timeout must end it.
func blackhole(t *testing.T) shoal.Record {
	t.Helper()
	lc := net.ListenConfig{}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	raw, _ := ln.(*net.TCPListener).SyscallConn()
	raw.Control(func(fd uintptr) { unix.Listen(int(fd), 0) })
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 200*time.Millisecond)
		if err != nil {
			break // the queue is full
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Skip("the kernel accepts past a zero backlog here")
		}
	}
	ta := ln.Addr().(*net.TCPAddr)
	return shoal.Record{Service: "web", Node: "n1", Addr: ta.IP.String(), PortName: "tcp", Port: ta.Port, Healthy: true}
}

// TestBalancerDialTimeout: an instance that never answers a connect costs
// the dial timeout, and the connection goes to another.
func TestBalancerDialTimeout(t *testing.T) {
	hole := blackhole(t)
	good := tcpBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.WriteString(c, "ok") })
	lb, addr := startBalancer(t, BalancerConfig{DialTimeout: 150 * time.Millisecond}, hole, good)
	for i := range 12 {
		c := dialLB(t, addr, 5*time.Second)
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != "ok" {
			t.Fatalf("connection %d: %q, %v", i, got, err)
		}
	}
	if st := lb.Stats()["web"]; st.DialFailures == 0 {
		t.Errorf("twelve connections and no dial timed out on the silent instance: %+v", st)
	}
}

// TestBalancerRouteRemovalAndClose: removing a route stops new
// connections but lets open ones finish; Close ends those too.
func TestBalancerRouteRemovalAndClose(t *testing.T) {
	rec := tcpBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
	lb, addr := startBalancer(t, BalancerConfig{}, rec)
	c := dialLB(t, addr, 10*time.Second)
	echo := func(msg string) error {
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echoed %q, want %q", buf, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	lb.SetRoutes(nil)
	if c2, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c2.Close()
		t.Fatal("a removed route still accepts")
	}
	if err := echo("draining"); err != nil {
		t.Fatalf("an open connection broke when its route went: %v", err)
	}
	if st := lb.Stats()["web"]; st.Active != 1 {
		t.Errorf("active %d, want 1", st.Active)
	}
	done := make(chan struct{})
	go func() { lb.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection survived Close")
	}
	if st := lb.Stats()["web"]; st.Active != 0 {
		t.Errorf("active %d after Close", st.Active)
	}
}

// TestBalancerIPv6 listens and dials over IPv6 loopback.
func TestBalancerIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback:", err)
	} else {
		ln.Close()
	}
	rec := tcpBackend(t, "tcp", "[::1]:0", func(c net.Conn) { io.WriteString(c, "six") })
	_, addr := startBalancer(t, BalancerConfig{ListenHost: "::1"}, rec)
	c := dialLB(t, addr, 5*time.Second)
	if got, err := io.ReadAll(c); err != nil || string(got) != "six" {
		t.Fatalf("%q, %v", got, err)
	}
}

// TestBalancerCandidatesPerGeneration: with a Generation, the records are
// read once per change, not for every connection, and a change is seen.
func TestBalancerCandidatesPerGeneration(t *testing.T) {
	one := tcpBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.WriteString(c, "one") })
	two := tcpBackend(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.WriteString(c, "two") })
	var mu sync.Mutex
	recs, gen, reads := []shoal.Record{one}, uint64(1), 0
	lb := NewBalancer(BalancerConfig{ListenHost: "127.0.0.1", Logger: quiet,
		Generation: func() uint64 { mu.Lock(); defer mu.Unlock(); return gen }},
		func() []shoal.Record { mu.Lock(); defer mu.Unlock(); reads++; return recs })
	t.Cleanup(func() { lb.Close() })
	port := freeUDPTCPPort(t)
	lb.SetRoutes([]Route{{Service: "web", PortName: "tcp", Port: port}})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	get := func() string {
		c := dialLB(t, addr, 5*time.Second)
		b, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for i := range 5 {
		if got := get(); got != "one" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	mu.Lock()
	if reads != 1 {
		t.Errorf("records read %d times for 5 connections in one generation", reads)
	}
	recs, gen = []shoal.Record{two}, gen+1
	mu.Unlock()
	if got := get(); got != "two" {
		t.Fatalf("after a new generation: %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if reads != 2 {
		t.Errorf("records read %d times, want 2 after one change", reads)
	}
}
