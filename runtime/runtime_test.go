package runtime_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/internal/ctrtest"
	"github.com/shoal-run/shoal/runtime"
)

// One private containerd and one registry serve every test of the package.
var (
	env     sync.Once
	socket  string
	reg     *ctrtest.Registry
	appRef  string
	envErr  error
	envStop func()
)

type envT struct {
	testing.TB
	cleanups []func()
}

func (e *envT) Cleanup(f func()) { e.cleanups = append(e.cleanups, f) }

// setup starts the package's one containerd and registry, shared by every
// test and benchmark.
func setup(t testing.TB) {
	t.Helper()
	env.Do(func() {
		et := &envT{TB: t}
		defer func() {
			if r := recover(); r != nil {
				envErr = fmt.Errorf("%v", r)
			}
		}()
		socket = ctrtest.Containerd(et)
		reg = ctrtest.NewRegistry(et)
		appRef = reg.PushTestApp(et, "shoal/testapp:1")
		envStop = func() {
			for i := len(et.cleanups) - 1; i >= 0; i-- {
				et.cleanups[i]()
			}
		}
	})
	if envErr != nil || socket == "" {
		t.Fatalf("test environment: %v", envErr)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if envStop != nil {
		envStop()
	}
	// Every test removes its network: nothing of Shoal's may be left.
	if out, err := exec.Command("iptables-save").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "shtest") || strings.Contains(l, "CNI-") || strings.Contains(l, "SHOAL-") {
				fmt.Fprintf(os.Stderr, "left behind by the tests: %s\n", l)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// portBlock gives each runtime of the package its own 200 host ports
// (23000-27999; the agent tests use 22000-22999), so concurrent runtimes
// never race for one port.
var portBlock atomic.Int32

func newRuntime(t *testing.T, ns string, opts ...func(*runtime.Config)) (*runtime.Runtime, func()) {
	t.Helper()
	setup(t)
	block := int(portBlock.Add(1) % 25)
	low := 23000 + 200*block
	dir := t.TempDir()
	cfg := runtime.Config{
		Socket: socket, Namespace: ns, DataDir: dir, NodeName: "n1",
		Interval: 100 * time.Millisecond, PortLow: low, PortHigh: low + 199,
		Network: testNetwork(block),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	rt, err := runtime.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rt.Run(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; rt.Close() }) }
	t.Cleanup(func() {
		stop() // or it would restart what the cleanup removes
		// Remove whatever the test left in its namespace.
		rt2, err := runtime.New(context.Background(), runtime.Config{Socket: socket, Namespace: ns, DataDir: dir, Network: cfg.Network, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		if err := rt2.Drain(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if err := rt2.RemoveNetwork(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		rt2.Close()
	})
	return rt, stop
}

// testNetwork is a bridge and subnet of the runtime's own, in the host's
// network namespace, removed by the test's clean-up.
func testNetwork(block int) runtime.NetworkConfig {
	return runtime.NetworkConfig{Bridge: fmt.Sprintf("shtest%d", block), Subnet: fmt.Sprintf("10.91.%d.0/24", block), DenyPorts: []int{7900, 7946}}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func web(replicas int, env map[string]string) shoal.Service {
	return shoal.Service{
		Name: "web", Image: appRef, Replicas: replicas, Env: env,
		Resources: shoal.Resources{CPU: 0.5, Memory: 64 << 20},
		Ports:     []shoal.Port{{Name: "http", Port: 80, Protocol: shoal.ProtocolHTTP}},
		Restart:   shoal.RestartPolicy{Policy: shoal.RestartAlways, Backoff: shoal.Duration(200 * time.Millisecond), MaxBackoff: shoal.Duration(time.Second)},
		Update:    shoal.UpdateStrategy{MaxSurge: 1},
	}
}

func desired(svc shoal.Service) []runtime.Desired {
	var d []runtime.Desired
	for i := 0; i < svc.Replicas; i++ {
		d = append(d, runtime.Desired{Slot: shoal.Slot{Service: svc.Name, Index: i}, Service: svc})
	}
	return d
}

func healthy(rt *runtime.Runtime, n int) func() bool {
	return func() bool {
		c := 0
		for _, in := range rt.Instances() {
			if in.State == shoal.StateHealthy {
				c++
			}
		}
		return c == n && len(rt.Instances()) == n
	}
}

func get(port int, path string) (string, error) {
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), nil
}

func ctrCtx(ns string) context.Context { return namespaces.WithNamespace(context.Background(), ns) }

func TestStartWithLimitsAndPorts(t *testing.T) {
	rt, _ := newRuntime(t, "t-start")
	rt.SetDesired("rev1", desired(web(3, nil)))
	waitFor(t, 30*time.Second, "3 healthy instances", healthy(rt, 3))
	ports := map[int]bool{}
	for _, in := range rt.Instances() {
		p := in.Ports["http"]
		if p == 0 || ports[p] {
			t.Fatalf("bad or duplicate port for %v: %v", in.Slot, in.Ports)
		}
		ports[p] = true
		var body string
		waitFor(t, 10*time.Second, "the instance to answer", func() bool {
			var err error
			body, err = get(p, "/")
			return err == nil
		})
		if want := fmt.Sprintf("hello from web/%d on n1", in.Index); !strings.Contains(body, want) {
			t.Errorf("GET / = %q, want %q", body, want)
		}
		if in.Revision != "rev1" || in.SpecHash == "" || in.ContainerID == "" {
			t.Errorf("instance %+v", in)
		}
		// Limits are in the container's cgroup (v1 layout here; v2 otherwise).
		mem := readCgroup(t, "memory", "t-start", in.ContainerID, "memory.limit_in_bytes", "memory.max")
		if mem != strconv.Itoa(64<<20) {
			t.Errorf("memory limit = %q", mem)
		}
		quota := readCgroup(t, "cpu", "t-start", in.ContainerID, "cpu.cfs_quota_us", "cpu.max")
		if !strings.HasPrefix(quota, "50000") {
			t.Errorf("cpu quota = %q, want 50000 (0.5 core)", quota)
		}
	}
}

func readCgroup(t *testing.T, ctrl, ns, id, v1file, v2file string) string {
	t.Helper()
	for _, p := range []string{
		filepath.Join("/sys/fs/cgroup", ctrl, ns, id, v1file),
		filepath.Join("/sys/fs/cgroup", ns, id, v2file),
	} {
		if b, err := os.ReadFile(p); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	t.Fatalf("no cgroup file for %s/%s (%s)", ns, id, v1file)
	return ""
}

func TestKilledProcessIsRestarted(t *testing.T) {
	rt, _ := newRuntime(t, "t-kill")
	rt.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	in := rt.Instances()[0]
	client, err := containerd.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := client.LoadContainer(ctrCtx("t-kill"), in.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.Task(ctrCtx("t-kill"), nil)
	if err != nil {
		t.Fatal(err)
	}
	oldPid := task.Pid()
	if err := syscall.Kill(int(oldPid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "restart with a new process", func() bool {
		ins := rt.Instances()
		if len(ins) != 1 || ins[0].Restarts < 1 || ins[0].State != shoal.StateHealthy {
			return false
		}
		task, err := c.Task(ctrCtx("t-kill"), nil)
		return err == nil && task.Pid() != oldPid
	})
	if _, err := get(rt.Instances()[0].Ports["http"], "/"); err != nil {
		t.Errorf("restarted instance does not answer: %v", err)
	}
}

// testClock is a clock the test moves by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// TestCrashLoopBacksOff runs a container that exits after 100 ms, on a
// clock the test holds: restart n must wait until the clock reaches the
// backoff after restart n-1, and not come while the clock stands just
// short of it.
func TestCrashLoopBacksOff(t *testing.T) {
	clock := &testClock{t: time.Now()}
	rt, _ := newRuntime(t, "t-crash", func(c *runtime.Config) { c.Now = clock.Now })
	svc := web(1, map[string]string{"EXIT_AFTER": "100ms", "EXIT_CODE": "3"})
	// Policy 200 ms doubling to 1 s. The backoff counts from the previous
	// restart; the first two restarts are immediate.
	wantWait := map[int]time.Duration{1: 0, 2: 0, 3: 200 * time.Millisecond, 4: 400 * time.Millisecond, 5: 800 * time.Millisecond}
	rt.SetDesired("rev1", desired(svc))
	exited := func(restarts int) func() bool {
		return func() bool {
			ins := rt.Instances()
			if len(ins) == 1 && ins[0].Restarts > restarts {
				t.Fatalf("restart %d came while the clock stood still, before its backoff", ins[0].Restarts)
			}
			return len(ins) == 1 && ins[0].Restarts == restarts && !ins[0].ExitedAt.IsZero() &&
				(ins[0].State == shoal.StateExited || ins[0].State == shoal.StateCrashLoop)
		}
	}
	var last time.Time // when (on the clock) the previous restart happened
	for n := 1; n <= runtime.CrashLoopAfter; n++ {
		if n == 1 {
			// The first exit is containerd's time, on the real clock.
			waitFor(t, 60*time.Second, "the first exit", exited(0))
			last = rt.Instances()[0].ExitedAt
		} else if wantWait[n] > 0 {
			// Without a backoff the exit is over before it can be seen.
			waitFor(t, 60*time.Second, fmt.Sprintf("exit before restart %d", n), exited(n-1))
		}
		due := last.Add(wantWait[n])
		if wantWait[n] > 0 {
			// Just short of the backoff, for five of the runtime's rounds:
			// no restart.
			clock.Set(due.Add(-time.Millisecond))
			for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
				if in := rt.Instances()[0]; in.Restarts != n-1 {
					t.Fatalf("restart %d came %v into a backoff of %v", n, wantWait[n]-time.Millisecond, wantWait[n])
				}
			}
		}
		clock.Set(due)
		waitFor(t, 60*time.Second, fmt.Sprintf("restart %d once the backoff of %v passed", n, wantWait[n]), func() bool {
			return rt.Instances()[0].Restarts >= n
		})
		if got := rt.Instances()[0].Restarts; got != n {
			t.Fatalf("%d restarts, want %d", got, n)
		}
		last = due
	}
	waitFor(t, 60*time.Second, "crash loop state", func() bool {
		ins := rt.Instances()
		return len(ins) == 1 && ins[0].State == shoal.StateCrashLoop
	})
}

func TestUnhealthyIsRestarted(t *testing.T) {
	rt, _ := newRuntime(t, "t-health")
	svc := web(1, nil)
	svc.Health = &shoal.Health{HTTP: "/healthz", Interval: shoal.Duration(100 * time.Millisecond), Timeout: shoal.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 2}
	rt.SetDesired("rev1", desired(svc))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	port := rt.Instances()[0].Ports["http"]
	resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(port)+"/fail", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sawUnhealthy := false
	waitFor(t, 20*time.Second, "unhealthy, then restarted healthy", func() bool {
		in := rt.Instances()[0]
		sawUnhealthy = sawUnhealthy || in.State == shoal.StateUnhealthy || in.Restarts > 0
		return sawUnhealthy && in.Restarts >= 1 && in.State == shoal.StateHealthy
	})
}

// sameNode makes a runtime use cfg's data and network: the same node's
// agent, started again.
func sameNode(cfg *runtime.Config) func(*runtime.Config) {
	return func(c *runtime.Config) {
		c.DataDir, c.Network, c.PortLow, c.PortHigh = cfg.DataDir, cfg.Network, cfg.PortLow, cfg.PortHigh
	}
}

func TestAdoptionAfterRestart(t *testing.T) {
	var cfg runtime.Config
	rt, stop := newRuntime(t, "t-adopt", func(c *runtime.Config) { cfg = *c })
	rt.SetDesired("rev1", desired(web(2, nil)))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 2))
	before := rt.Instances()
	stop() // the agent goes away; containers keep running

	// From its first look on, the new runtime reports the kept containers
	// healthy: what the agent publishes to its peers through a restart.
	rt2, _ := newRuntime(t, "t-adopt", sameNode(&cfg))
	waitFor(t, 10*time.Second, "first look", rt2.Observed)
	if !healthy(rt2, 2)() {
		t.Fatalf("first look: %+v, want the 2 kept containers healthy", rt2.Instances())
	}
	rt2.SetDesired("rev1", desired(web(2, nil)))
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if !healthy(rt2, 2)() {
			t.Fatalf("after SetDesired: %+v, want the 2 kept containers healthy throughout", rt2.Instances())
		}
	}
	after := rt2.Instances()
	for i := range before {
		if before[i].ContainerID != after[i].ContainerID || !before[i].StartedAt.Equal(after[i].StartedAt) || after[i].Restarts != 0 {
			t.Errorf("slot %v: before %+v after %+v", before[i].Slot, before[i], after[i])
		}
		if before[i].Ports["http"] != after[i].Ports["http"] || before[i].IP != after[i].IP {
			t.Errorf("port or address changed on adoption")
		}
		if _, err := httpGet(fmt.Sprintf("http://%s/", net.JoinHostPort(after[i].IP, strconv.Itoa(after[i].Targets["http"])))); err != nil {
			t.Errorf("adopted %v at its address: %v", after[i].Slot, err)
		}
	}
}

// A container removed while no agent watched (a crash, kill -9, someone
// with ctr) leaves its address and host port rules: the next runtime
// reclaims them on its first look.
func TestReclaimsNetworkOfVanishedContainers(t *testing.T) {
	var cfg runtime.Config
	rt, stop := newRuntime(t, "t-reclaim", func(c *runtime.Config) { cfg = *c })
	rt.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	in := rt.Instances()[0]
	stop()
	hostPort := "--dport " + strconv.Itoa(in.Ports["http"])
	if !strings.Contains(natRules(t), hostPort) {
		t.Fatalf("no rule for host port %s to begin with", hostPort)
	}
	client, err := containerd.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := client.LoadContainer(ctrCtx("t-reclaim"), in.ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if err := runtime.DeleteContainer(ctrCtx("t-reclaim"), c, time.Second); err != nil {
		t.Fatal(err)
	}
	rt2, _ := newRuntime(t, "t-reclaim", sameNode(&cfg))
	waitFor(t, 10*time.Second, "first look", rt2.Observed)
	waitFor(t, 10*time.Second, "the host port's rules reclaimed", func() bool { return !strings.Contains(natRules(t), hostPort) })
	ipam, _ := os.ReadDir(filepath.Join(cfg.DataDir, "cni", "ipam", "shoal-"+cfg.Network.Bridge))
	for _, e := range ipam {
		if e.Name() == in.IP {
			t.Errorf("address %s of the vanished container still reserved", in.IP)
		}
	}
}

// natRules is the nat table as iptables-save prints it.
func natRules(t *testing.T) string {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// network: host keeps the old way: the process on the node's network,
// listening on the host port it is handed in PORT.
func TestHostNetworkService(t *testing.T) {
	rt, _ := newRuntime(t, "t-hostnet")
	svc := web(1, nil)
	svc.Network = shoal.NetworkHost
	rt.SetDesired("rev1", desired(svc))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	in := rt.Instances()[0]
	if in.IP != "" || in.Targets != nil {
		t.Errorf("host-networked instance has a bridge address: %+v", in)
	}
	if body, err := get(in.Ports["http"], "/"); err != nil || !strings.Contains(body, "hello from web/0") {
		t.Errorf("host port %d: %q, %v", in.Ports["http"], body, err)
	}
}

func TestReplaceAndRemove(t *testing.T) {
	rt, _ := newRuntime(t, "t-replace")
	rt.SetDesired("rev1", desired(web(2, map[string]string{"MESSAGE": "v1"})))
	waitFor(t, 30*time.Second, "healthy v1", healthy(rt, 2))
	old := rt.Instances()
	rt.SetDesired("rev2", desired(web(2, map[string]string{"MESSAGE": "v2"})))
	waitFor(t, 30*time.Second, "replaced by v2", func() bool {
		ins := rt.Instances()
		if !healthy(rt, 2)() {
			return false
		}
		for i, in := range ins {
			if in.ContainerID == old[i].ContainerID || in.Revision != "rev2" {
				return false
			}
			if body, err := get(in.Ports["http"], "/"); err != nil || strings.TrimSpace(body) != "v2" {
				return false
			}
		}
		return true
	})
	// Scale to one: slot 1 is stopped and removed from containerd.
	rt.SetDesired("rev3", desired(web(1, map[string]string{"MESSAGE": "v2"})))
	waitFor(t, 30*time.Second, "slot 1 removed", healthy(rt, 1))
	client, _ := containerd.New(socket)
	defer client.Close()
	cs, err := client.Containers(ctrCtx("t-replace"))
	if err != nil || len(cs) != 1 {
		t.Errorf("containers left: %d (%v)", len(cs), err)
	}
}

// A replaced slot keeps serving: with max_surge the new container starts
// beside the old one, which goes only after the new one has been healthy
// for min_healthy_time. A client that always asks the published instance
// sees no failure.
func TestSurgeKeepsServing(t *testing.T) {
	rt, _ := newRuntime(t, "t-surge")
	v1 := web(1, map[string]string{"MESSAGE": "v1"})
	v1.Update.MinHealthyTime = shoal.Duration(500 * time.Millisecond)
	rt.SetDesired("rev1", desired(v1))
	waitFor(t, 30*time.Second, "healthy v1", healthy(rt, 1))

	published := func() (shoal.Record, bool) {
		rs := shoal.RecordsFor("n1", "127.0.0.1", rt.Instances())
		return rs[0], len(rs) == 1 && rs[0].Healthy
	}
	var failed, ok atomic.Int64
	var both atomic.Bool
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if len(rt.Instances()) == 2 {
				both.Store(true)
			}
			r, up := published()
			if !up {
				failed.Add(1)
			} else if _, err := get(r.Port, "/"); err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	v2 := v1
	v2.Env = map[string]string{"MESSAGE": "v2"}
	rt.SetDesired("rev2", desired(v2))
	waitFor(t, 30*time.Second, "v2 alone", func() bool {
		ins := rt.Instances()
		r, up := published()
		body, err := get(r.Port, "/")
		return len(ins) == 1 && ins[0].Revision == "rev2" && up && err == nil && strings.TrimSpace(body) == "v2"
	})
	close(stop)
	<-done
	if !both.Load() {
		t.Error("the old and the new container never ran side by side")
	}
	if failed.Load() > 0 {
		t.Errorf("%d of %d requests failed during the replacement", failed.Load(), failed.Load()+ok.Load())
	}
}

// Images no container uses are deleted past the cap.
func TestUnusedImagesAreCollected(t *testing.T) {
	rt, _ := newRuntime(t, "t-gc", func(c *runtime.Config) { c.KeepUnusedImages = -1 })
	oldRef := reg.PushTestApp(t, "shoal/testapp:gc-old")
	a := web(1, nil)
	a.Image = oldRef
	rt.SetDesired("rev1", desired(a))
	waitFor(t, 30*time.Second, "healthy on the old image", healthy(rt, 1))
	rt.SetDesired("rev2", desired(web(1, nil)))
	client, err := containerd.New(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := ctrCtx("t-gc")
	waitFor(t, 30*time.Second, "the old image deleted", func() bool {
		_, errOld := client.GetImage(ctx, oldRef)
		_, errNew := client.GetImage(ctx, appRef)
		return errdefs.IsNotFound(errOld) && errNew == nil && healthy(rt, 1)()
	})
}

func TestBadImageDoesNotBlockOthers(t *testing.T) {
	rt, _ := newRuntime(t, "t-badimg")
	bad := web(1, nil)
	bad.Name, bad.Image = "broken", reg.Host+"/shoal/nope:1"
	rt.SetDesired("rev1", append(desired(bad), desired(web(1, nil))...))
	waitFor(t, 30*time.Second, "web healthy, broken reported", func() bool {
		var webOK, brokenErr bool
		for _, in := range rt.Instances() {
			webOK = webOK || in.Service == "web" && in.State == shoal.StateHealthy
			brokenErr = brokenErr || in.Service == "broken" && strings.Contains(in.LastError, "pull "+bad.Image)
		}
		return webOK && brokenErr
	})
	for _, in := range rt.Instances() {
		if in.Service == "broken" && !strings.Contains(in.LastError, "attempt") {
			t.Errorf("error does not show retries: %q", in.LastError)
		}
	}
}

func TestRegistryDownThenImageArrives(t *testing.T) {
	setup(t)
	down := ctrtest.NewRegistry(t)
	ref := down.Host + "/shoal/late:1"
	down.Close()
	rt, _ := newRuntime(t, "t-regdown")
	svc := web(1, nil)
	svc.Image = ref
	rt.SetDesired("rev1", desired(svc))
	waitFor(t, 20*time.Second, "pull error reported", func() bool {
		ins := rt.Instances()
		return len(ins) == 1 && strings.Contains(ins[0].LastError, "pull")
	})
	// Push the same image name to the shared registry and point at it: the
	// runtime retries and starts it.
	svc.Image = reg.PushTestApp(t, "shoal/late:1")
	rt.SetDesired("rev2", desired(svc))
	waitFor(t, 30*time.Second, "started after the image became available", healthy(rt, 1))
}

func TestNamespacesAreIsolated(t *testing.T) {
	a, _ := newRuntime(t, "t-ns-a")
	b, _ := newRuntime(t, "t-ns-b")
	a.SetDesired("rev1", desired(web(1, nil)))
	b.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 30*time.Second, "both healthy", func() bool { return healthy(a, 1)() && healthy(b, 1)() })
	b.SetDesired("rev2", nil) // b stops its own, never a's
	waitFor(t, 20*time.Second, "b empty", func() bool { return len(b.Instances()) == 0 })
	if !healthy(a, 1)() {
		t.Errorf("a was touched: %+v", a.Instances())
	}
}

func TestLogs(t *testing.T) {
	rt, _ := newRuntime(t, "t-logs")
	rt.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	waitFor(t, 10*time.Second, "log line", func() bool {
		rc, err := rt.Logs(shoal.Slot{Service: "web", Index: 0}, false)
		if err != nil {
			return false
		}
		defer rc.Close()
		b, _ := io.ReadAll(rc)
		return strings.Contains(string(b), "testapp listening on :")
	})
	if _, err := rt.Logs(shoal.Slot{Service: "nope", Index: 0}, false); err == nil {
		t.Error("logs of an unknown slot: want error")
	}
}

// TestLogsRotateWhileRunning: a container that writes past the log cap
// keeps running; its log is moved to .1 and starts again, and a follower
// goes on reading the new output.
func TestLogsRotateWhileRunning(t *testing.T) {
	var dir string
	rt, _ := newRuntime(t, "t-logrot", func(c *runtime.Config) { c.LogMaxBytes = 8 << 10; dir = c.DataDir })
	rt.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 30*time.Second, "healthy", healthy(rt, 1))
	before := rt.Instances()[0]
	slot := shoal.Slot{Service: "web", Index: 0}
	follow, err := rt.Logs(slot, true)
	if err != nil {
		t.Fatal(err)
	}
	defer follow.Close()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(follow)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	post := func(path string) {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", before.Ports["http"], path), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post("/log?n=64000")
	logFile := filepath.Join(dir, "logs", "web-0.log")
	waitFor(t, 10*time.Second, "the log rotated", func() bool {
		old, err1 := os.Stat(logFile + ".1")
		cur, err2 := os.Stat(logFile)
		return err1 == nil && err2 == nil && old.Size() > 8<<10 && cur.Size() <= 8<<10
	})
	// Output after the rotation reaches the file and the follower.
	for drained := false; !drained; {
		select {
		case <-lines:
		case <-time.After(500 * time.Millisecond):
			drained = true
		}
	}
	post("/log?n=100")
	waitFor(t, 10*time.Second, "new output in the rotated log", func() bool {
		b, err := os.ReadFile(logFile)
		return err == nil && strings.Contains(string(b), "xxxx") && len(b) < 8<<10
	})
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, "xxxx") {
			t.Fatalf("follower after rotation: %q (open %v)", l, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the follower saw nothing written after the rotation")
	}
	if after := rt.Instances()[0]; after.ContainerID != before.ContainerID || after.Restarts != 0 {
		t.Errorf("container restarted while its log rotated: %+v", after)
	}
}

// TestExecAndTCPChecks: an exec check runs a command inside the container
// (the test app's own "check" mode, which asks its /healthz) and a TCP
// check dials the port; both put the instance in service, and a failing
// exec check takes it out and restarts it.
func TestExecAndTCPChecks(t *testing.T) {
	rt, _ := newRuntime(t, "t-checks")
	execSvc := web(1, nil)
	execSvc.Health = &shoal.Health{Exec: []string{"/app", "check"}, Interval: shoal.Duration(200 * time.Millisecond),
		Timeout: shoal.Duration(2 * time.Second), HealthyThreshold: 1, UnhealthyThreshold: 2}
	tcpSvc := web(1, nil)
	tcpSvc.Name = "tcp"
	tcpSvc.Health = &shoal.Health{TCP: true, Interval: shoal.Duration(200 * time.Millisecond), Timeout: shoal.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 2}
	rt.SetDesired("rev1", append(desired(execSvc), desired(tcpSvc)...))
	waitFor(t, 30*time.Second, "both healthy by their checks", healthy(rt, 2))

	var port int
	for _, in := range rt.Instances() {
		if in.Service == "web" {
			port = in.Ports["http"]
		}
	}
	resp, err := http.Post("http://127.0.0.1:"+strconv.Itoa(port)+"/fail", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sawUnhealthy := false
	defer func() {
		if t.Failed() {
			for _, in := range rt.Instances() {
				t.Logf("instance %s: state %s restarts %d error %q", in.Slot, in.State, in.Restarts, in.LastError)
			}
		}
	}()
	waitFor(t, 20*time.Second, "the exec check failing, then a restart", func() bool {
		for _, in := range rt.Instances() {
			if in.Service == "web" {
				sawUnhealthy = sawUnhealthy || in.State == shoal.StateUnhealthy || in.Restarts > 0
				return sawUnhealthy && in.Restarts >= 1 && in.State == shoal.StateHealthy
			}
		}
		return false
	})
	for _, in := range rt.Instances() {
		if in.Service == "tcp" && in.Restarts != 0 {
			t.Errorf("the tcp-checked instance restarted: %+v", in)
		}
	}
}

// TestNoContainerdSaysWhatToDo: with no daemon on the socket, the runtime
// says how to start one; with no containerd binary either, how to install it.
func TestNoContainerdSaysWhatToDo(t *testing.T) {
	dir := t.TempDir()
	cfg := runtime.Config{Socket: filepath.Join(dir, "none.sock"), Namespace: "t-none", DataDir: dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	_, err := runtime.New(context.Background(), cfg)
	if !errors.Is(err, runtime.ErrNoContainerd) || !strings.Contains(err.Error(), "--start-containerd") {
		t.Errorf("no daemon: %v", err)
	}
	t.Setenv("PATH", t.TempDir()) // no containerd binary to start
	cfg.StartContainerd = true
	_, err = runtime.New(context.Background(), cfg)
	if !errors.Is(err, runtime.ErrNoContainerd) || !strings.Contains(err.Error(), "apt-get install containerd") {
		t.Errorf("no binary: %v", err)
	}
}

// TestStartsPrivateContainerd: with no daemon on the socket, the runtime
// starts its own under its data dir (as an agent on a machine with only
// the packages installed does), runs a container on it, and stops it.
func TestStartsPrivateContainerd(t *testing.T) {
	setup(t) // the registry with the test image
	dir, err := os.MkdirTemp("", "shpriv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctrtest.RemoveAll(filepath.Join(dir, "containerd")); os.RemoveAll(dir) })
	rt, err := runtime.New(context.Background(), runtime.Config{
		Socket: filepath.Join(dir, "none.sock"), StartContainerd: true, Namespace: "t-private", DataDir: dir,
		Network:  runtime.NetworkConfig{Mode: runtime.NetworkHost},
		NodeName: "n1", Interval: 100 * time.Millisecond, PortLow: 28300, PortHigh: 28399,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	private := rt.Socket()
	if !strings.HasPrefix(private, dir) {
		t.Errorf("socket %s: want a private daemon under %s", private, dir)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { rt.Run(ctx); close(done) }()
	rt.SetDesired("rev1", desired(web(1, nil)))
	waitFor(t, 60*time.Second, "healthy on the private daemon", healthy(rt, 1))
	cancel()
	<-done
	if err := rt.Drain(context.Background()); err != nil {
		t.Error(err)
	}
	rt.Close()
	if c, err := net.Dial("unix", private); err == nil {
		c.Close()
		t.Error("the private containerd still answers after Close")
	}
}

// In a rolling update one node may hold a slot already on the new
// definition beside a slot still on the old one: each is checked against
// its own slot's definition, so the new copy gets healthy and replaces
// the old. (The checks once looked definitions up by service, and the new
// copy waited for a check forever.)
func TestRollingSlotsOfOneServiceOnOneNode(t *testing.T) {
	rt, _ := newRuntime(t, "t-partial")
	v1 := web(2, map[string]string{"MESSAGE": "v1"})
	v1.Update.MinHealthyTime = shoal.Duration(200 * time.Millisecond)
	rt.SetDesired("rev1", desired(v1))
	waitFor(t, 30*time.Second, "2 healthy v1", healthy(rt, 2))
	v2 := v1
	v2.Env = map[string]string{"MESSAGE": "v2"}
	d := desired(v1)
	d[0].Service = v2 // slot 0's turn; slot 1 waits
	rt.SetDesired("rev2", d)
	waitFor(t, 30*time.Second, "slot 0 on v2, healthy, its old copy gone", func() bool {
		ins := rt.Instances()
		return len(ins) == 2 && ins[0].SpecHash == v2.Hash() && ins[0].State == shoal.StateHealthy && ins[1].SpecHash == v1.Hash()
	})
}
