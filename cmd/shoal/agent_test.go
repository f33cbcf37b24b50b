package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync/gittest"
	"github.com/shoal-run/shoal/internal/ctrtest"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/runtime"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// cleanNetwork removes, after the test, the container network an agent
// with cfg makes in the host's namespace.
func cleanNetwork(t *testing.T, cfg agentConfig) {
	t.Cleanup(func() {
		nc := runtime.NetworkConfig{Bridge: cfg.Bridge, Subnet: cfg.ContainerSubnet}
		if err := runtime.CleanNetwork(context.Background(), nc, filepath.Join(cfg.DataDir, "runtime")); err != nil {
			t.Errorf("clean the container network: %v", err)
		}
	})
}

// runningAgent is an agent started in the test process.
type runningAgent struct {
	a    *agent
	stop func()
}

func startAgent(t *testing.T, cfg agentConfig) *runningAgent {
	t.Helper()
	if err := cfg.finish(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newAgent(ctx, cfg, log.With("node", cfg.NodeName))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent %s: %v", cfg.NodeName, err)
		}
	}
	t.Cleanup(stop)
	return &runningAgent{a: a, stop: stop}
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func healthyRecords(a *agent, svc string) int {
	n := 0
	for _, r := range a.Records() {
		if r.Service == svc && r.Healthy {
			n++
		}
	}
	return n
}

func webSpec(replicas int, image string, port int) string {
	return fmt.Sprintf("name: web\nimage: %s\nreplicas: %d\nresources: {cpu: 0.1, memory: 32Mi}\nports:\n  - {name: http, port: %d, protocol: http}\nhealth: {http: /healthz, interval: 200ms, timeout: 200ms}\n", image, replicas, port)
}

// TestAgentOneNode deploys a repository on one node and checks the service
// through the balancer and DNS, scaling by commit, a bad commit, and an
// agent restart that restarts no container.
func TestAgentOneNode(t *testing.T) {
	socket := ctrtest.Containerd(t)
	reg := ctrtest.NewRegistry(t)
	img := reg.PushTestApp(t, "shoal/testapp:1")
	repo := gittest.New(t)
	srv := repo.Serve()
	svcPort := freePort(t)
	repo.Commit("web x2", map[string]string{"services/web.yaml": webSpec(2, img, svcPort)})

	cfg := agentConfig{
		Repo: srv.URL + "/remote.git", Branch: "main", Poll: 200 * time.Millisecond,
		DataDir: t.TempDir(), NodeName: "n1", CPU: 4, Memory: 8 << 30,
		Bind: "127.0.0.1:" + strconv.Itoa(freePort(t)), API: "127.0.0.1:" + strconv.Itoa(freePort(t)),
		DNS: "127.0.0.1:" + strconv.Itoa(freePort(t)), Ingress: "127.0.0.1",
		ContainerdSocket: socket, ContainerdNamespace: "agent-one", PortRange: "22000-22999",
		HandoffTimeout: 10 * time.Second, LogLevel: "info",
		Network: runtime.NetworkBridge, Bridge: "shagent1", ContainerSubnet: "10.93.1.0/24",
	}
	cleanNetwork(t, cfg)
	ra := startAgent(t, cfg)
	waitUntil(t, 60*time.Second, "2 healthy web records", func() bool { return healthyRecords(ra.a, "web") == 2 })

	// Real traffic through the balancer on the service port.
	// One connection per request: the balancer picks per connection.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", svcPort))
		if err != nil {
			t.Fatalf("request %d through the balancer: %v\nrecords %+v\nstats %+v", i, err, ra.a.Records(), ra.a.lb.Stats())
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		seen[strings.TrimSpace(string(b))] = true
	}
	if !seen["hello from web/0 on n1"] || !seen["hello from web/1 on n1"] {
		t.Errorf("balancer did not reach both instances: %v", seen)
	}

	// Real DNS queries.
	c := new(dns.Client)
	m := new(dns.Msg)
	m.SetQuestion("web.service.shoal.", dns.TypeA)
	in, _, err := c.Exchange(m, cfg.DNS)
	if err != nil || len(in.Answer) == 0 {
		t.Fatalf("DNS web.service.shoal: %v %v", err, in)
	}
	if a, ok := in.Answer[0].(*dns.A); !ok || a.A.String() != "127.0.0.1" {
		t.Errorf("answer %v", in.Answer[0])
	}

	// Scale by commit.
	repo.Commit("web x3", map[string]string{"services/web.yaml": webSpec(3, img, svcPort)})
	waitUntil(t, 30*time.Second, "3 healthy web records", func() bool { return healthyRecords(ra.a, "web") == 3 })
	good := ra.a.Status().Revision

	// A broken commit changes nothing and shows in status with file:line.
	bad := repo.Commit("typo", map[string]string{"services/web.yaml": strings.Replace(webSpec(1, img, svcPort), "replicas", "replicaz", 1)})
	waitUntil(t, 30*time.Second, "the error in status", func() bool {
		st := ra.a.Status()
		return strings.Contains(st.Sync.LastError, bad[:7]) || strings.Contains(strings.Join(st.Errors, "\n"), "services/web.yaml:3")
	})
	st := ra.a.Status()
	if st.Revision != good || healthyRecords(ra.a, "web") != 3 {
		t.Errorf("bad commit changed the node: revision %s (want %s), %d healthy", st.Revision, good, healthyRecords(ra.a, "web"))
	}
	if !strings.Contains(strings.Join(st.Errors, "\n"), "services/web.yaml:3:1: replicaz: unknown field") {
		t.Errorf("status errors lack file:line:field: %q", st.Errors)
	}

	// Restart the agent: no container restarts.
	before := ra.a.rt.Instances()
	ra.stop()
	ra2 := startAgent(t, cfg)
	waitUntil(t, 30*time.Second, "3 healthy after restart", func() bool { return healthyRecords(ra2.a, "web") == 3 })
	after := ra2.a.rt.Instances()
	if len(after) != len(before) {
		t.Fatalf("instances %d → %d", len(before), len(after))
	}
	for i := range before {
		if before[i].ContainerID != after[i].ContainerID || !before[i].StartedAt.Equal(after[i].StartedAt) || after[i].Restarts != 0 {
			t.Errorf("slot %v restarted: %+v → %+v", before[i].Slot, before[i], after[i])
		}
	}
	_ = shoal.Slot{}
}

// TestAgentBalancerThreadsFlag: a negative thread count is refused by
// name before anything starts; 0 means one per CPU.
func TestAgentBalancerThreadsFlag(t *testing.T) {
	var stderr strings.Builder
	code, err := runAgent(t.Context(), []string{"--repo", t.TempDir(), "--balancer-threads", "-1"}, io.Discard, &stderr)
	if code == 0 || err == nil || !strings.Contains(err.Error(), "--balancer-threads -1: want 1 or more") {
		t.Fatalf("exit %d, err %v", code, err)
	}
	var c agentConfig // other settings missing: their errors do not matter here
	if err := c.finish(); c.BalancerThreads != mesh.CPUs() || strings.Contains(fmt.Sprint(err), "balancer") {
		t.Fatalf("default: %d loops (err %v), want one per CPU, %d", c.BalancerThreads, err, mesh.CPUs())
	}
}

// TestAgentReconnectFlags: the reconnection timers default to the mesh's
// (a failed member remembered a day) and a negative one is refused.
func TestAgentReconnectFlags(t *testing.T) {
	var c agentConfig
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	c.flags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c.ReconnectTimeout < 24*time.Hour || c.TombstoneTimeout != mesh.DefaultTombstoneTimeout || c.RejoinMaxInterval != mesh.DefaultRejoinMaxInterval {
		t.Fatalf("defaults: reconnect %v, tombstone %v, rejoin ceiling %v", c.ReconnectTimeout, c.TombstoneTimeout, c.RejoinMaxInterval)
	}
	var stderr strings.Builder
	code, err := runAgent(t.Context(), []string{"--repo", t.TempDir(), "--reconnect-timeout", "-1s"}, io.Discard, &stderr)
	if code == 0 || err == nil || !strings.Contains(err.Error(), "--reconnect-timeout") {
		t.Fatalf("exit %d, err %v", code, err)
	}
}
