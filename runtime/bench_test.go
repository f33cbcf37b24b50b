package runtime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/remotes/docker"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/runtime"
)

// Issue #5: converging replicas from nothing through the runtime should
// cost at most 1.2× a plain loop of containerd client calls doing the same
// work. Both benchmarks below start each iteration from the same state
// (the image pulled and unpacked in benchNS, no containers), stop the
// clock once containerd runs all benchReplicas tasks, and tear down with
// the clock stopped. bench/runtime.sh runs them and compares.
const (
	benchNS       = "bench-converge"
	benchReplicas = 20
	// benchParallel is the runtime's default bound on concurrent container
	// operations (Config.Parallel); the plain loop uses as many workers.
	benchParallel = 4
	// Host ports: the runtime tests use 22000-27999.
	benchRuntimePorts = 28000 // the runtime's range, 200 ports
	benchPlainPorts   = 28200 // the plain loop's, one per replica
)

// BenchmarkConvergeRuntime measures SetDesired of benchReplicas replicas
// until the runtime's snapshot (Instances) shows every one with a running
// task. The runtime runs as the agent runs it: Run with the default
// interval and parallelism, started with the clock stopped.
func BenchmarkConvergeRuntime(b *testing.B) {
	client := benchEnv(b)
	svc := web(benchReplicas, nil)
	want := desired(svc)
	for b.Loop() {
		b.StopTimer()
		rt, stop := startBenchRuntime(b)
		b.StartTimer()

		rt.SetDesired("bench", want)
		waitAllRunning(b, rt, benchReplicas)

		b.StopTimer()
		stop()
		removeBenchContainers(b, client)
		b.StartTimer()
	}
}

// BenchmarkConvergePlainLoop does by hand what the runtime does per
// replica — create the container with an equivalent OCI spec (image
// config, the agent's network namespace, the same env, labels and limits,
// host hosts and resolv.conf), create its task logging to a file, start it
// — with benchParallel workers, and stops the clock once containerd
// reports every task running.
func BenchmarkConvergePlainLoop(b *testing.B) {
	client := benchEnv(b)
	svc := web(benchReplicas, nil)
	ctx := ctrCtx(benchNS)
	netns := fmt.Sprintf("/proc/%d/ns/net", os.Getpid())
	iter := 0
	for b.Loop() {
		b.StopTimer()
		iter++
		logDir := b.TempDir()
		b.StartTimer()

		img, err := client.GetImage(ctx, appRef)
		if err != nil {
			b.Fatal(err)
		}
		hash := svc.Hash()
		jobs := make(chan int)
		errs := make(chan error, benchReplicas)
		var wg sync.WaitGroup
		for range benchParallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range jobs {
					errs <- plainStart(ctx, client, img, svc, hash, netns, logDir, iter, i)
				}
			}()
		}
		for i := range benchReplicas {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}

		b.StopTimer()
		removeBenchContainers(b, client)
		b.StartTimer()
	}
}

// plainStart creates and starts replica i the way runtime.start does,
// without the runtime's bookkeeping, and checks its task runs.
func plainStart(ctx context.Context, client *containerd.Client, img containerd.Image, svc shoal.Service, hash, netns, logDir string, iter, i int) error {
	id := fmt.Sprintf("plain-%s-%d-%d", svc.Name, i, iter)
	port := benchPlainPorts + i
	portJSON, _ := json.Marshal(map[string]int{svc.Ports[0].Name: port})
	labels := map[string]string{
		runtime.LabelService: svc.Name, runtime.LabelSlot: strconv.Itoa(i),
		runtime.LabelSpecHash: hash, runtime.LabelRevision: "bench", runtime.LabelNode: "n1",
		runtime.LabelPorts: string(portJSON), runtime.LabelImage: svc.Image,
		"shoal.started": time.Now().UTC().Format(time.RFC3339Nano),
	}
	env := []string{
		"SHOAL_SERVICE=" + svc.Name, "SHOAL_SLOT=" + strconv.Itoa(i), "SHOAL_NODE=n1",
		"PORT=" + strconv.Itoa(port), "SHOAL_PORT_HTTP=" + strconv.Itoa(port),
	}
	const period = 100000
	c, err := client.NewContainer(ctx, id,
		containerd.WithImage(img),
		containerd.WithNewSnapshot(id, img),
		containerd.WithContainerLabels(labels),
		containerd.WithNewSpec(
			oci.WithImageConfig(img),
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns}),
			oci.WithEnv(env),
			oci.WithHostHostsFile,
			oci.WithMemoryLimit(uint64(svc.Resources.Memory)),
			oci.WithCPUCFS(int64(svc.Resources.CPU*period), period),
			oci.WithHostResolvconf,
		),
	)
	if err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	task, err := c.NewTask(ctx, cio.LogFile(filepath.Join(logDir, fmt.Sprintf("%s-%d.log", svc.Name, i))))
	if err != nil {
		return fmt.Errorf("create task %s: %w", id, err)
	}
	if err := task.Start(ctx); err != nil {
		return fmt.Errorf("start task %s: %w", id, err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		return fmt.Errorf("status %s: %w", id, err)
	}
	if st.Status != containerd.Running {
		return fmt.Errorf("task %s is %s, want running", id, st.Status)
	}
	return nil
}

// benchEnv returns a client of the shared containerd with the test image
// pulled and unpacked in benchNS and no containers there: the state every
// iteration of both benchmarks starts from.
func benchEnv(b *testing.B) *containerd.Client {
	b.Helper()
	setup(b)
	client, err := containerd.New(socket)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		removeBenchContainers(b, client)
		client.Close()
	})
	ctx := ctrCtx(benchNS)
	if _, err := client.GetImage(ctx, appRef); errdefs.IsNotFound(err) {
		resolver := docker.NewResolver(docker.ResolverOptions{
			Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(docker.MatchLocalhost)),
		})
		if _, err := client.Pull(ctx, appRef, containerd.WithPullUnpack, containerd.WithResolver(resolver)); err != nil {
			b.Fatalf("pull %s: %v", appRef, err)
		}
	} else if err != nil {
		b.Fatal(err)
	}
	removeBenchContainers(b, client)
	return client
}

// startBenchRuntime starts a runtime on benchNS as the agent does (default
// interval and parallelism) and returns it with its stop function.
func startBenchRuntime(b *testing.B) (*runtime.Runtime, func()) {
	b.Helper()
	rt, err := runtime.New(context.Background(), runtime.Config{
		Socket: socket, Namespace: benchNS, DataDir: b.TempDir(), NodeName: "n1",
		PortLow: benchRuntimePorts, PortHigh: benchRuntimePorts + 199, Parallel: benchParallel,
		Network: runtime.NetworkConfig{Mode: runtime.NetworkHost},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rt.Run(ctx); close(done) }()
	// Let Run's first round (nothing desired yet, nothing found) finish,
	// so the clock starts on an idle runtime.
	time.Sleep(100 * time.Millisecond)
	return rt, func() { cancel(); <-done; rt.Close() }
}

// waitAllRunning waits until the runtime's snapshot shows n instances,
// each with a container whose task runs (starting or healthy).
func waitAllRunning(b *testing.B, rt *runtime.Runtime, n int) {
	b.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		ins := rt.Instances()
		running := 0
		for _, in := range ins {
			if in.ContainerID != "" && (in.State == shoal.StateStarting || in.State == shoal.StateHealthy) {
				running++
			}
		}
		if running == n && len(ins) == n {
			return
		}
		select {
		case <-rt.Changes():
		case <-timeout:
			b.Fatalf("timed out waiting for %d running instances: %+v", n, ins)
		}
	}
}

// removeBenchContainers kills and deletes every container of benchNS, with
// their snapshots, and gives containerd a moment to collect them.
func removeBenchContainers(b *testing.B, client *containerd.Client) {
	b.Helper()
	ctx := ctrCtx(benchNS)
	cs, err := client.Containers(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if len(cs) == 0 {
		return
	}
	sem := make(chan struct{}, benchParallel)
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if task, err := c.Task(ctx, nil); err == nil {
				task.Delete(ctx, containerd.WithProcessKill)
			}
			c.Delete(ctx, containerd.WithSnapshotCleanup)
		}()
	}
	wg.Wait()
	if cs, err := client.Containers(ctx); err != nil || len(cs) != 0 {
		b.Fatalf("containers left in %s: %d (%v)", benchNS, len(cs), err)
	}
	time.Sleep(250 * time.Millisecond)
}

// BenchmarkStartHealthy measures what a namespace of its own costs a
// container: SetDesired of benchHealthy replicas until every one passes
// its first health check, with host networking and on the bridge (CNI
// attach, port mapping, checks at the container address). Issue #14's
// goal: bridge ≤ 1.3× host. bench/network.sh compares them.
func BenchmarkStartHealthy(b *testing.B) {
	const benchHealthy = 5
	for _, mode := range []string{runtime.NetworkHost, runtime.NetworkBridge} {
		b.Run("network="+mode, func(b *testing.B) {
			client := benchEnv(b)
			svc := web(benchHealthy, nil)
			svc.Health = &shoal.Health{HTTP: "/healthz", Interval: shoal.Duration(time.Second), Timeout: shoal.Duration(time.Second), Grace: shoal.Duration(5 * time.Second), HealthyThreshold: 1, UnhealthyThreshold: 3}
			want := desired(svc)
			net := runtime.NetworkConfig{Mode: mode, Bridge: "shbench0", Subnet: "10.94.0.0/24"}
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				rt, err := runtime.New(context.Background(), runtime.Config{
					Socket: socket, Namespace: benchNS, DataDir: dir, NodeName: "n1",
					PortLow: benchRuntimePorts, PortHigh: benchRuntimePorts + 199, Parallel: benchParallel,
					Network: net, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { rt.Run(ctx); close(done) }()
				for !rt.Observed() {
					time.Sleep(10 * time.Millisecond)
				}
				b.StartTimer()

				rt.SetDesired("bench", want)
				deadline := time.Now().Add(2 * time.Minute)
				for !healthy(rt, benchHealthy)() {
					if time.Now().After(deadline) {
						b.Fatalf("not healthy in 2m: %+v", rt.Instances())
					}
					time.Sleep(5 * time.Millisecond)
				}

				b.StopTimer()
				if err := rt.Drain(context.Background()); err != nil {
					b.Fatal(err)
				}
				cancel()
				<-done
				if err := rt.RemoveNetwork(); err != nil {
					b.Fatal(err)
				}
				rt.Close()
				removeBenchContainers(b, client)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkBalancerBackends measures requests through the mesh balancer
// (a new connection each) to two testapp replicas run with host
// networking, on the bridge dialed at their container addresses (as a
// node's balancer dials its own), and on the bridge through their host
// ports (as peers reach them). Issue #14's goal: bridged ≥ 0.9× host.
// bench/network.sh compares them.
func BenchmarkBalancerBackends(b *testing.B) {
	for _, c := range []struct{ name, mode, local string }{
		{"backends=host", runtime.NetworkHost, "n1"},
		{"backends=bridge-direct", runtime.NetworkBridge, "n1"},
		{"backends=bridge-hostport", runtime.NetworkBridge, "elsewhere"},
	} {
		b.Run(c.name, func(b *testing.B) {
			client := benchEnv(b)
			rt, err := runtime.New(context.Background(), runtime.Config{
				Socket: socket, Namespace: benchNS, DataDir: b.TempDir(), NodeName: "n1",
				PortLow: benchRuntimePorts, PortHigh: benchRuntimePorts + 199, Parallel: benchParallel,
				Network: runtime.NetworkConfig{Mode: c.mode, Bridge: "shbench0", Subnet: "10.94.0.0/24"},
				Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { rt.Run(ctx); close(done) }()
			defer func() {
				rt.Drain(context.Background())
				cancel()
				<-done
				rt.RemoveNetwork()
				rt.Close()
				removeBenchContainers(b, client)
			}()
			rt.SetDesired("bench", desired(web(2, nil)))
			deadline := time.Now().Add(time.Minute)
			for !healthy(rt, 2)() {
				if time.Now().After(deadline) {
					b.Fatalf("not healthy: %+v", rt.Instances())
				}
				time.Sleep(10 * time.Millisecond)
			}
			// Peers reach host ports at the node's address, not loopback
			// (which takes the kernel's slower route_localnet path).
			recs := shoal.RecordsFor("n1", nodeAddr(b), rt.Instances())
			lb := mesh.NewBalancer(mesh.BalancerConfig{ListenHost: "127.0.0.1", LocalNode: c.local, Loops: 1,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, func() []shoal.Record { return recs })
			defer lb.Close()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			lb.SetRoutes([]mesh.Route{{Service: "web", PortName: "http", Port: port}})
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
			get := func() error {
				resp, err := hc.Get(url)
				if err != nil {
					return err
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return err
			}
			for deadline := time.Now().Add(10 * time.Second); get() != nil; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					b.Fatal("the balancer never answered")
				}
			}
			var failed atomic.Int64
			b.ResetTimer()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if get() != nil {
						failed.Add(1)
					}
				}
			})
			b.StopTimer()
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d requests failed", n)
			}
		})
	}
}

// nodeAddr is this machine's first non-loopback IPv4 address.
func nodeAddr(b *testing.B) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil && !strings.HasPrefix(ipn.IP.String(), "10.94.") {
			return ipn.IP.String()
		}
	}
	b.Fatal("no non-loopback IPv4 address")
	return ""
}
