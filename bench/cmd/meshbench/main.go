// Command meshbench runs Shoal's balancer, Shoal's DNS, or a trivial HTTP
// backend on loopback, for bench/balancer.sh and bench/dns.sh to measure
// against HAProxy and unbound. It is a benchmark harness, not part of the
// product.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/mesh"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: meshbench backend|lb|dns [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "backend":
		err = backend(ctx, os.Args[2:])
	case "lb":
		err = balancer(ctx, os.Args[2:])
	case "dns":
		err = dnsServer(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshbench:", err)
		os.Exit(1)
	}
}

// backend answers every request with a short body, like a small service.
func backend(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:19001", "listen address")
	fs.Parse(args)
	srv := &http.Server{Addr: *addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the backend\n")
	})}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// records are healthy instances of service web, one per backend address.
func records(backends string) ([]shoal.Record, error) {
	var rs []shoal.Record
	for i, b := range strings.Split(backends, ",") {
		host, port, err := net.SplitHostPort(b)
		if err != nil {
			return nil, err
		}
		p, _ := strconv.Atoi(port)
		rs = append(rs, shoal.Record{Service: "web", Slot: i, Node: "bench", Addr: host, PortName: "http", Port: p, Healthy: true})
	}
	return rs, nil
}

// threadsFlag is the agent's --balancer-threads, which sets the process
// up for the balancer's loops (DNS shares the process, so it counts too).
func threadsFlag(fs *flag.FlagSet) *int {
	return fs.Int("balancer-threads", runtime.GOMAXPROCS(0), "as shoal agent --balancer-threads (and its default): N loops and N more Ps; 0 for one loop fewer than the CPUs and no Ps added")
}

// startProfile writes a CPU profile to path until stop; no path, no profile.
func startProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// balancer runs Shoal's balancer for service web over static records.
func balancer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lb", flag.ExitOnError)
	host := fs.String("host", "127.0.0.1", "listen host")
	port := fs.Int("port", 18080, "service port")
	backends := fs.String("backends", "127.0.0.1:19001", "comma-separated backend addresses")
	profile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	threads := threadsFlag(fs)
	fs.Parse(args)
	stop, err := startProfile(*profile)
	if err != nil {
		return err
	}
	defer stop()
	rs, err := records(*backends)
	if err != nil {
		return err
	}
	mesh.ReserveProcs(*threads)
	lb := mesh.NewBalancer(mesh.BalancerConfig{ListenHost: *host, LocalNode: "bench", Loops: *threads, Generation: func() uint64 { return 0 },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, func() []shoal.Record { return rs })
	lb.SetRoutes([]mesh.Route{{Service: "web", PortName: "http", Port: *port}})
	return lb.Run(ctx)
}

// dnsServer runs Shoal's DNS over n services with three instances each,
// on nodes 10.0.<svc>.1-3.
func dnsServer(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:18600", "listen address")
	n := fs.Int("services", 20, "number of services")
	profile := fs.String("cpuprofile", "", "write a CPU profile of the run to this file")
	threads := threadsFlag(fs)
	fs.Parse(args)
	stop, err := startProfile(*profile)
	if err != nil {
		return err
	}
	defer stop()
	var rs []shoal.Record
	var names []string
	for s := 0; s < *n; s++ {
		name := fmt.Sprintf("svc%d", s)
		names = append(names, name)
		for i := 0; i < 3; i++ {
			rs = append(rs, shoal.Record{Service: name, Slot: i, Node: fmt.Sprintf("node%d", i+1),
				Addr: fmt.Sprintf("10.0.%d.%d", s, i+1), PortName: "http", Port: 20000 + i, Healthy: true})
		}
	}
	mesh.ReserveProcs(*threads)
	d := mesh.NewDNS(mesh.DNSConfig{Addr: *addr, BalancerAddr: "127.0.0.1", Upstreams: []string{"127.0.0.1:1"},
		Services: func() []string { return names }, Generation: func() uint64 { return 1 }, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		func() []shoal.Record { return rs })
	if err := d.Listen(); err != nil {
		return err
	}
	return d.Run(ctx)
}
