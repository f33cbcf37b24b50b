// Package e2e runs a real five-node Shoal fleet — agent processes in their
// own network namespaces, one containerd, a registry, a Git repository —
// and checks what users rely on with real traffic: deploy by push, scaling,
// node loss, bad commits and agent restarts. It prints the figures users
// compare orchestrators by.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/internal/devfleet"
	"github.com/shoal-run/shoal/placement"
)

const nodes = 5

type harness struct {
	t     *testing.T
	f     *devfleet.Fleet
	nodes []devfleet.Node
	image string
	files map[string]string // the spec tree at the last commit
	http  *http.Client
}

func buildShoal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shoal")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/shoal-run/shoal/cmd/shoal")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build shoal: %v\n%s", err, out)
	}
	return bin
}

func start(t *testing.T) *harness { return startFleet(t, "she2e", "10.213.9.0/24") }

// startFleet starts the five-node fleet in namespaces named after prefix,
// on subnet: fleets of different tests never share either.
func startFleet(t *testing.T, prefix, subnet string) *harness {
	t.Helper()
	dir := t.TempDir()
	if keep := os.Getenv("SHOAL_E2E_DIR"); keep != "" {
		// Node logs and data outlive the run, for debugging.
		dir = keep
	}
	f, err := devfleet.Start(context.Background(), devfleet.Config{
		Nodes: nodes, Prefix: prefix, Subnet: subnet, Binary: buildShoal(t), Dir: dir,
		// A slow poll: pushes must arrive by webhook and announcement.
		Poll: 10 * time.Second,
		// Trusted keys on: every commit is signed, unless a test says not.
		SignCommits: true,
		// Autoscaling shrinks after 3 s of lower traffic, not the default minute.
		ExtraAgentArgs: []string{"--scale-down-delay", "3s"},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, f, 25)
	h.waitFor(30*time.Second, "5 alive members", func() bool { return len(h.alive(0)) == nodes })
	return h
}

// newHarness drives fleet f in test t and tears it down after the test,
// printing each node's last logLines log lines when the test failed.
func newHarness(t *testing.T, f *devfleet.Fleet, logLines int) *harness {
	t.Cleanup(func() {
		if t.Failed() {
			for i := range f.Nodes() {
				if b, err := os.ReadFile(f.LogPath(i)); err == nil {
					lines := strings.Split(string(b), "\n")
					t.Logf("--- %s (last lines) ---\n%s", f.Nodes()[i].Name, strings.Join(lines[max(0, len(lines)-logLines):], "\n"))
				}
			}
		}
		if err := f.Close(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	return &harness{t: t, f: f, nodes: f.Nodes(), image: f.Registry + "/shoal/testapp:1", files: map[string]string{},
		http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}}
}

func (h *harness) api(i int, path string, out any) error {
	req, _ := http.NewRequest(http.MethodGet, "http://"+h.nodes[i].API+path, nil)
	req.Header.Set("Authorization", "Bearer "+h.f.Token)
	resp, err := h.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

type member struct {
	Name   string            `json:"name"`
	Status string            `json:"status"`
	CPU    float64           `json:"cpu"`
	Memory shoal.Bytes       `json:"memory"`
	Labels map[string]string `json:"labels"`
}

func (h *harness) alive(i int) []shoal.Node {
	var ms []member
	if h.api(i, "/v1/members", &ms) != nil {
		return nil
	}
	var out []shoal.Node
	for _, m := range ms {
		if m.Status == "alive" {
			out = append(out, shoal.Node{Name: m.Name, CPU: m.CPU, Memory: m.Memory, Labels: m.Labels})
		}
	}
	return out
}

func (h *harness) records(i int) []shoal.Record {
	var rs []shoal.Record
	h.api(i, "/v1/records", &rs)
	return rs
}

func (h *harness) waitFor(d time.Duration, what string, cond func() bool) time.Duration {
	h.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			h.t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// push commits changed files and tells node 1 by webhook, as a Git host
// would; node 1 announces the commit to the others.
func (h *harness) push(msg string, changes map[string]string) string {
	h.t.Helper()
	for k, v := range changes {
		h.files[k] = v
	}
	commit, err := h.f.Commit(msg, changes)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.f.Webhook(0, commit); err != nil {
		h.t.Fatal(err)
	}
	return commit
}

func (h *harness) spec() *shoal.Spec {
	h.t.Helper()
	fsys := fstest.MapFS{}
	for k, v := range h.files {
		fsys[k] = &fstest.MapFile{Data: []byte(v)}
	}
	s, err := shoal.LoadSpec(fsys, ".")
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// converged reports whether, as node i sees the fleet, every slot of the
// plan for the alive members is healthy on exactly its planned node, with
// no other copy anywhere; and the slots of the changed services (all when
// none are named) run revision commit.
func (h *harness) converged(i int, commit string, changed ...string) bool {
	isChanged := func(svc string) bool {
		if len(changed) == 0 {
			return true
		}
		for _, c := range changed {
			if c == svc {
				return true
			}
		}
		return false
	}
	plan := placement.Plan(h.spec(), h.alive(i))
	want := map[string]string{}
	for _, a := range plan.Assignments {
		want[shoal.Slot{Service: a.Service, Index: a.Slot}.String()] = a.Node
	}
	got := map[string]string{}
	for _, r := range h.records(i) {
		key := shoal.Slot{Service: r.Service, Index: r.Slot}.String()
		if !r.Healthy || (commit != "" && isChanged(r.Service) && !strings.HasPrefix(commit, r.Revision)) {
			return false
		}
		if prev, dup := got[key]; dup && prev != r.Node {
			return false
		}
		got[key] = r.Node
	}
	if len(got) != len(want) {
		return false
	}
	for k, n := range want {
		if got[k] != n {
			return false
		}
	}
	return len(plan.Unplaced) == 0
}

// convergedEverywhere: every node's own view is exactly the plan.
func (h *harness) convergedEverywhere() bool {
	for i := range h.nodes {
		if !h.converged(i, "") {
			return false
		}
	}
	return true
}

// settled: every node sees every node alive and its view is exactly the
// plan. Converged views alone can agree on a membership some node is
// about to change (a healed node it has not yet seen back), and then
// the fleet moves slots.
func (h *harness) settled() bool {
	for i := range h.nodes {
		if len(h.alive(i)) != len(h.nodes) {
			return false
		}
	}
	return h.convergedEverywhere()
}

// fingerprint names every instance in records: a container that restarts
// or moves changes its host port, node or revision.
func fingerprint(rs []shoal.Record) string {
	var lines []string
	for _, r := range rs {
		lines = append(lines, fmt.Sprintf("%s:%d rev %s healthy %v", r.Key(), r.Port, r.Revision, r.Healthy))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func service(name string, replicas, port int, image, message string) string {
	env := ""
	if message != "" {
		env = fmt.Sprintf("env: {MESSAGE: %q}\n", message)
	}
	return fmt.Sprintf("name: %s\nimage: %s\nreplicas: %d\nresources: {cpu: 0.1, memory: 32Mi}\nports:\n  - {name: http, port: %d, protocol: http}\nhealth: {http: /healthz, interval: 250ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 2}\nupdate: {max_surge: 1}\n%s", name, image, replicas, port, env)
}

func (h *harness) get(node, port int) (string, error) { return h.getPath(node, port, "/") }

// lastMessage is what web answers with at the last commit.
func (h *harness) lastMessage() string {
	f := h.files["web.yaml"]
	if i := strings.Index(f, "MESSAGE: \""); i >= 0 {
		rest := f[i+len("MESSAGE: \""):]
		return rest[:strings.Index(rest, "\"")]
	}
	return ""
}

// getInside fetches / on port through node i's own balancer from inside
// its network namespace, which a cut node is still reachable from.
func (h *harness) getInside(i, port int) (string, error) {
	n := h.nodes[i]
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialIn(n.NSPath, addr)
		},
	}}
	return fetch(client, fmt.Sprintf("http://%s:%d/", n.Addr, port))
}

// dialIn connects from inside a network namespace: a socket belongs to the
// namespace of the thread that made it, so a locked thread switches in,
// makes it, and switches back.
func dialIn(nsPath, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		goruntime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open(nsPath)
		if err != nil {
			goruntime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			goruntime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		// A thread that cannot switch back stays locked, and the runtime
		// discards it when this goroutine ends.
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			goruntime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func (h *harness) getPath(node, port int, path string) (string, error) {
	return fetch(h.http, fmt.Sprintf("http://%s:%d%s", h.nodes[node].Addr, port, path))
}

// fetch GETs url and returns the trimmed body of a 200 answer.
func fetch(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return strings.TrimSpace(string(b)), err
}

// load sends requests through node i's balancer until stopped, counting
// failures.
type load struct {
	ok, failed atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	errs       []string // the first few failures, for the report
}

func (h *harness) startLoad(node, port int) *load {
	return startLoadFn(func() error { _, err := h.get(node, port); return err })
}

// startLoadFn runs get in two loops until stopped, counting failures.
func startLoadFn(get func() error) *load {
	l := &load{stop: make(chan struct{})}
	for w := 0; w < 2; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				if err := get(); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) end() (ok, failed int64) {
	close(l.stop)
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load()
}

// firstErrors lists the first failures with their times.
func (l *load) firstErrors() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "; ")
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func TestFleet(t *testing.T) {
	h := start(t)
	var figures []string
	report := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		figures = append(figures, line)
		t.Log(line)
	}
	defer func() {
		fmt.Println("\nFLEET FIGURES (5 nodes, one machine)")
		for _, f := range figures {
			fmt.Println("  " + f)
		}
	}()

	// 1. Deploy by push: three services land exactly where the plan says,
	// and answer through every node's balancer and DNS.
	t.Run("deploy", func(t *testing.T) {
		h.t = t
		var firstFailures atomic.Int64
		commit := h.push("three services", map[string]string{
			"web.yaml":  service("web", 3, 8080, h.image, ""),
			"api.yaml":  service("api", 2, 9090, h.image, ""),
			"echo.yaml": service("echo", 1, 7070, h.image, ""),
		})
		took := h.waitFor(60*time.Second, "the plan to be running", func() bool { return h.converged(0, commit) })
		report("first deploy (3 services, 6 slots, cold image pulls): %v", took.Round(time.Millisecond))
		defer func() {
			report("deploy: requests through every node's balancer right after convergence: %d failed", firstFailures.Load())
		}()
		for i := range h.nodes {
			// Every node's own view reaches the same plan (records gossip).
			h.waitFor(10*time.Second, fmt.Sprintf("node %d to see the plan", i+1), func() bool { return h.converged(i, commit) })
			for _, svc := range []struct {
				name string
				port int
			}{{"web", 8080}, {"api", 9090}, {"echo", 7070}} {
				h.waitFor(5*time.Second, fmt.Sprintf("%s through node %d", svc.name, i+1), func() bool {
					body, err := h.get(i, svc.port)
					if err != nil {
						firstFailures.Add(1)
						t.Logf("%s through node %d: %v (retrying)", svc.name, i+1, err)
					}
					return err == nil && strings.HasPrefix(body, "hello from "+svc.name+"/")
				})
			}
			m := new(dns.Msg)
			m.SetQuestion("web.service.shoal.", dns.TypeA)
			in, _, err := new(dns.Client).Exchange(m, h.nodes[i].DNS)
			if err != nil || len(in.Answer) != len(nodesWith(h.records(i), "web")) {
				t.Errorf("DNS on node %d: %v %v", i+1, err, in)
			}
			// Containers resolve through their node's mesh DNS: the names
			// of other services, bare (the balancer) and .service.shoal.
			h.waitFor(10*time.Second, fmt.Sprintf("DNS inside a container via node %d", i+1), func() bool {
				all, err := h.getPath(i, 8080, "/lookup?host=api.service.shoal")
				if err != nil || all != strings.Join(nodesWith(h.records(i), "api"), "\n") {
					t.Logf("api.service.shoal from a container via node %d: %q, %v (retrying)", i+1, all, err)
					return false
				}
				lb, err := h.getPath(i, 8080, "/lookup?host=api")
				return err == nil && h.isNodeAddr(lb)
			})
		}
	})

	// 2. Push → serving, over 10 pushes that change web.
	t.Run("push-to-serving", func(t *testing.T) {
		h.t = t
		var lat, known []time.Duration
		for p := 0; p < 10; p++ {
			msg := fmt.Sprintf("v%d", p)
			t0 := time.Now()
			// max_surge 3: every slot updates at once, beside its old copy.
			web := strings.Replace(service("web", 3, 8080, h.image, msg), "max_surge: 1", "max_surge: 3", 1)
			commit := h.push("web "+msg, map[string]string{"web.yaml": web})
			// Every node knows the commit (webhook, fetch, announce, fetch).
			h.waitFor(30*time.Second, "every node at "+msg, func() bool {
				for i := range h.nodes {
					var st nodeStatus
					if h.api(i, "/v1/status", &st) != nil || st.Revision != commit {
						return false
					}
				}
				return true
			})
			known = append(known, time.Since(t0))
			h.waitFor(30*time.Second, "web "+msg+" serving", func() bool {
				if !h.converged(0, commit, "web") {
					return false
				}
				body, err := h.get(0, 8080)
				return err == nil && body == msg
			})
			lat = append(lat, time.Since(t0))
		}
		report("push → all replicas serving (webhook to one node, announce to the rest; 3 replicas replaced at once): p50 %v, p99 %v over %d pushes; of which push → every node at the commit: p50 %v",
			percentile(lat, 0.5).Round(time.Millisecond), percentile(lat, 0.99).Round(time.Millisecond), len(lat), percentile(known, 0.5).Round(time.Millisecond))
	})

	// 2b. Rolling update: with max_surge 1 the slots take the new version
	// one at a time in index order, each after the one before is healthy,
	// while every request through the balancers succeeds.
	t.Run("rolling-update", func(t *testing.T) {
		h.t = t
		l := h.startLoad(1, 8080)
		commit := h.push("web rolled", map[string]string{"web.yaml": service("web", 3, 8080, h.image, "rolled")})
		spec := shoal.ShortSpec(h.spec().Service("web").Hash())
		var order []int
		seenAt := map[int]time.Duration{} // when each slot was first seen new
		t0 := time.Now()
		took := h.waitFor(60*time.Second, "web rolled out", func() bool {
			done := map[int]bool{}
			for _, r := range h.records(0) {
				if r.Service == "web" && r.Healthy && r.Spec == spec {
					done[r.Slot] = true
				}
			}
			for i := 0; i < 3; i++ {
				if done[i] && !slices.Contains(order, i) {
					order = append(order, i)
					seenAt[i] = time.Since(t0)
				}
			}
			// Only a prefix of the slots may be new at any time.
			for i := 1; i < 3; i++ {
				if done[i] && !done[i-1] {
					t.Errorf("slot %d runs the new version before slot %d (seen %v)", i, i-1, done)
				}
			}
			return len(done) == 3 && h.converged(0, commit, "web")
		})
		ok, failed := l.end()
		// One at a time: each slot became new well after the one before
		// (a container start), not in the same look at the records.
		for i := 1; i < 3; i++ {
			if seenAt[i]-seenAt[i-1] < 100*time.Millisecond {
				t.Errorf("slots updated together, not one after another: first seen new at %v", seenAt)
			}
		}
		report("rolling update of 3 slots, max_surge 1: in %v (slots new at %v), %d requests ok, %d failed", took.Round(time.Millisecond), seenAt, ok, failed)
		if failed > 0 {
			t.Errorf("%d requests failed during the rolling update: %s", failed, l.firstErrors())
		}
	})

	// 3. Scale 2 → 5 → 1 by commit, under load through node 1.
	t.Run("scale", func(t *testing.T) {
		h.t = t
		for _, n := range []int{2, 5, 1} {
			var l *load
			if n == 1 {
				l = h.startLoad(0, 9090)
			}
			h.push(fmt.Sprintf("api x%d", n), map[string]string{"api.yaml": service("api", n, 9090, h.image, "")})
			took := h.waitFor(30*time.Second, fmt.Sprintf("api x%d", n), func() bool {
				return h.converged(0, "") && countHealthy(h.records(0), "api") == n
			})
			if l != nil {
				time.Sleep(500 * time.Millisecond) // keep the load on past the scale-down
				ok, failed := l.end()
				report("scale api 5 → 1 under load: %d requests ok, %d failed", ok, failed)
				if failed > 4 {
					t.Errorf("%d requests failed during scale-down (more than in flight)", failed)
				}
			}
			report("scale api to %d: converged in %v", n, took.Round(time.Millisecond))
		}
	})

	// 4. Node loss: kill an agent and its containers; its slots start
	// elsewhere. Steady load through node 1's balancer meanwhile.
	t.Run("node-loss", func(t *testing.T) {
		h.t = t
		var lat []time.Duration
		l := h.startLoad(0, 8080)
		for k := 0; k < 5; k++ {
			victim := 1 + k%(nodes-1)
			h.f.KillAgent(victim)
			h.f.KillContainers(context.Background(), victim)
			t0 := time.Now()
			h.waitFor(30*time.Second, "slots moved off the dead node", func() bool {
				return len(h.alive(0)) == nodes-1 && h.converged(0, "")
			})
			lat = append(lat, time.Since(t0))
			if err := h.f.StartAgent(victim); err != nil {
				t.Fatal(err)
			}
			h.waitFor(60*time.Second, "the node back and the plan running", func() bool {
				return len(h.alive(0)) == nodes && h.converged(0, "")
			})
		}
		ok, failed := l.end()
		report("node loss (kill -9 agent + containers) → its slots serving elsewhere: p50 %v, max %v over %d kills",
			percentile(lat, 0.5).Round(time.Millisecond), percentile(lat, 1).Round(time.Millisecond), len(lat))
		report("steady load through another node during 5 kills and rejoins: %d ok, %d failed", ok, failed)
	})

	// 4b. Partition: cut one node off for 30 s. The rest keep serving (and
	// place its slots among themselves); after the heal the fleet returns
	// to exactly the plan, with no duplicate slot, within a bound.
	t.Run("partition", func(t *testing.T) {
		h.t = t
		l := h.startLoad(0, 8080)
		cut := nodes - 1
		if err := h.f.Cut(cut); err != nil {
			t.Fatal(err)
		}
		h.waitFor(20*time.Second, "the majority to serve without the cut node", func() bool {
			return len(h.alive(0)) == nodes-1 && h.converged(0, "")
		})
		// The cut node serves too: its balancer, asked from inside its
		// namespace, reaches the copies it started of every slot.
		inside := func() error {
			body, err := h.getInside(cut, 8080)
			if err == nil && !strings.HasPrefix(body, "hello from web/") && body != h.lastMessage() {
				err = fmt.Errorf("unexpected answer %q", body)
			}
			return err
		}
		alone := h.waitFor(20*time.Second, "the cut node to serve on its own", func() bool { return inside() == nil })
		minority := startLoadFn(inside)
		time.Sleep(30*time.Second - alone) // the partition lasts 30 s
		mok, mfailed := minority.end()
		report("partition, cut side: serving alone after %v, then %d requests ok, %d failed", alone.Round(time.Millisecond), mok, mfailed)
		if mfailed > 4 {
			t.Errorf("%d requests failed on the cut node: %s", mfailed, minority.firstErrors())
		}
		if err := h.f.Heal(cut); err != nil {
			t.Fatal(err)
		}
		// Healed means every node — the cut one included — sees exactly
		// the plan: the copies the cut node started alone are gone.
		healed := h.waitFor(60*time.Second, "the exact plan after the heal", func() bool {
			return h.settled()
		})
		ok, failed := l.end()
		report("partition of one node for 30 s: majority kept serving (%d ok, %d failed); heal → exact plan, no duplicates, in %v",
			ok, failed, healed.Round(time.Millisecond))
		if failed > 4 {
			t.Errorf("%d requests failed on the majority side", failed)
		}
	})

	// 5. A broken commit changes nothing, and every node says why.
	t.Run("bad-commit", func(t *testing.T) {
		h.t = t
		var before nodeStatus
		h.waitFor(30*time.Second, "the fleet settled", func() bool {
			return h.settled() && h.api(0, "/v1/status", &before) == nil
		})
		running := fingerprint(h.records(0))
		bad, err := h.f.Commit("broken", map[string]string{"web.yaml": "name: web\nimage: x\nreplicas: lots\n"})
		if err != nil {
			t.Fatal(err)
		}
		h.f.Webhook(0, bad)
		for i := range h.nodes {
			h.waitFor(20*time.Second, fmt.Sprintf("node %d to report the error", i+1), func() bool {
				var st nodeStatus
				h.api(i, "/v1/status", &st)
				return strings.Contains(st.Sync.LastError, "web.yaml:3") && st.Revision == before.Revision
			})
		}
		if now := fingerprint(h.records(0)); now != running {
			t.Errorf("the fleet changed after a broken commit:\n%s\nnow:\n%s", running, now)
		}
		// Put the good spec back for what follows; nothing needs to change.
		fix := h.push("fix", map[string]string{"web.yaml": h.files["web.yaml"]})
		// Every node at fix: one still before it would next fetch the
		// unsigned head and never see fix.
		h.waitFor(30*time.Second, "fixed on every node", func() bool {
			for i := range h.nodes {
				var st nodeStatus
				if h.api(i, "/v1/status", &st) != nil || st.Revision != fix {
					return false
				}
			}
			return h.settled()
		})
		running = fingerprint(h.records(0))

		// A valid spec in an unsigned commit is refused just the same:
		// the agents run with trusted keys.
		unsigned, err := h.f.CommitUnsigned("unsigned scale-up", map[string]string{"web.yaml": service("web", 5, 8080, h.image, "")})
		if err != nil {
			t.Fatal(err)
		}
		h.f.Webhook(0, unsigned)
		for i := range h.nodes {
			h.waitFor(20*time.Second, fmt.Sprintf("node %d to refuse the unsigned commit", i+1), func() bool {
				var st nodeStatus
				h.api(i, "/v1/status", &st)
				return strings.Contains(st.Sync.LastError, "not signed") && st.Revision == fix
			})
		}
		if now := fingerprint(h.records(0)); now != running {
			t.Errorf("the fleet changed after an unsigned commit:\n%s\nnow:\n%s", running, now)
		}
		report("bad commits (invalid spec, unsigned commit): refused by all %d nodes, fleet unchanged", nodes)
		fix = h.push("signed again", map[string]string{"web.yaml": h.files["web.yaml"]})
		h.waitFor(30*time.Second, "signed head accepted", func() bool {
			var st nodeStatus
			return h.api(0, "/v1/status", &st) == nil && st.Revision == fix && st.Sync.LastError == "" && h.converged(0, "")
		})
	})

	// 7. Self-healing: a crashed container is restarted; an instance that
	// fails its health check leaves DNS and the balancer until it is
	// healthy again.
	t.Run("self-healing", func(t *testing.T) {
		h.t = t
		h.selfHealing(report)
	})

	// 5b. A version that never gets healthy, with auto_revert: the rollout
	// stops at its first slot, that slot goes back to the old version, and
	// nothing but the old version ever answers.
	t.Run("failed-version", func(t *testing.T) {
		h.t = t
		good, want := h.files["web.yaml"], h.lastMessage()
		l := startLoadFn(func() error {
			body, err := h.get(1, 8080)
			if err == nil && body != want && (want != "" || !strings.HasPrefix(body, "hello from web/")) {
				err = fmt.Errorf("answered %q, want the old version", body)
			}
			return err
		})
		broken := fmt.Sprintf("name: web\nimage: %s\nreplicas: 3\nresources: {cpu: 0.1, memory: 32Mi}\nports:\n  - {name: http, port: 8080, protocol: http}\n"+
			"health: {http: /healthz, interval: 250ms, timeout: 250ms, grace: 1s, unhealthy_threshold: 2}\n"+
			"update: {max_surge: 1, auto_revert: true}\nenv: {MESSAGE: broken, HEALTH: fail}\n", h.image)
		h.push("web that never gets healthy", map[string]string{"web.yaml": broken})
		bad := h.spec().Service("web").Hash()
		reverted := h.waitFor(30*time.Second, "a node to revert", func() bool {
			for i := range h.nodes {
				var st nodeStatus
				if h.api(i, "/v1/status", &st) == nil && strings.Contains(strings.Join(st.Errors, "\n"), "auto_revert") {
					return true
				}
			}
			return false
		})
		h.waitFor(30*time.Second, "the failed copies gone", func() bool {
			for i := range h.nodes {
				var st nodeStatus
				if h.api(i, "/v1/status", &st) != nil {
					return false
				}
				for _, in := range st.Instances {
					if in.SpecHash == bad {
						return false
					}
				}
			}
			return h.converged(0, "")
		})
		ok, failed := l.end()
		report("version failing its health checks, auto_revert: reverted after %v; %d requests ok, %d failed or answered by the new version",
			reverted.Round(time.Millisecond), ok, failed)
		if failed > 0 {
			t.Errorf("%d requests failed or reached the broken version: %s", failed, l.firstErrors())
		}
		h.push("web back", map[string]string{"web.yaml": good})
		h.waitFor(30*time.Second, "the revert forgotten", func() bool {
			for i := range h.nodes {
				var st nodeStatus
				if h.api(i, "/v1/status", &st) != nil || strings.Contains(strings.Join(st.Errors, "\n"), "auto_revert") {
					return false
				}
			}
			return h.converged(0, "")
		})
	})

	// 8. Autoscaling: traffic through one node's balancer scales a service
	// up on every node's count; when it stops, the service shrinks back.
	t.Run("autoscale", func(t *testing.T) {
		h.t = t
		busy := service("busy", 1, 5050, h.image, "") + "scale: {min: 1, max: 3, target: 5}\n"
		commit := h.push("busy autoscales", map[string]string{"busy.yaml": busy})
		h.waitFor(60*time.Second, "busy running", func() bool { return h.converged(0, commit, "busy") })
		l := h.startLoad(0, 5050)
		up := h.waitFor(30*time.Second, "busy scaled up to 3", func() bool { return countHealthy(h.records(0), "busy") == 3 })
		ok, failed := l.end()
		down := h.waitFor(60*time.Second, "busy back to 1", func() bool {
			return countHealthy(h.records(0), "busy") == 1 && h.converged(0, "")
		})
		report("autoscale (target 5 new conns/s per replica, max 3): load → 3 replicas in %v (%d ok, %d failed); load gone → 1 replica in %v",
			up.Round(time.Millisecond), ok, failed, down.Round(time.Millisecond))
		if failed > 0 {
			t.Errorf("%d requests failed while scaling up: %s", failed, l.firstErrors())
		}
	})

	// 6. Restart every agent in turn: no container restarts.
	t.Run("agent-restart", func(t *testing.T) {
		h.t = t
		var okAll, failedAll, dnsOK, dnsShort int64
		for i := range h.nodes {
			// Load through a node that is not the one restarting: a node's
			// own balancer is down while its agent restarts.
			l := h.startLoad((i+1)%nodes, 8080)
			var before, after nodeStatus
			// Snapshot once the node runs exactly its planned slots, not
			// copies still draining or handed off from earlier scenarios.
			h.waitFor(30*time.Second, "node settled", func() bool {
				plan := placement.Plan(h.spec(), h.alive(0))
				return h.converged(0, "") && h.api(i, "/v1/status", &before) == nil &&
					len(before.Instances) == len(plan.ForNode(h.nodes[i].Name))
			})
			// DNS on another node keeps naming every node with web, the
			// restarting one included: its records outlive the restart.
			other := h.nodes[(i+1)%nodes].DNS
			want := len(nodesWith(h.records((i+1)%nodes), "web"))
			dnsLoad := startLoadFn(func() error {
				m := new(dns.Msg)
				m.SetQuestion("web.service.shoal.", dns.TypeA)
				in, _, err := new(dns.Client).Exchange(m, other)
				if err == nil && len(in.Answer) != want {
					var got []string
					for _, rr := range in.Answer {
						if a, ok := rr.(*dns.A); ok {
							got = append(got, a.A.String())
						}
					}
					err = fmt.Errorf("A records %v, want %d", got, want)
				}
				return err
			})
			h.f.StopAgent(i)
			if err := h.f.StartAgent(i); err != nil {
				t.Fatal(err)
			}
			h.waitFor(30*time.Second, "agent back", func() bool {
				return h.api(i, "/v1/status", &after) == nil && len(after.Instances) == len(before.Instances) && h.converged(0, "")
			})
			ok, failed := l.end()
			okAll, failedAll = okAll+ok, failedAll+failed
			if failed > 0 {
				t.Errorf("node %d restarting: %d requests through node %d failed: %s", i+1, failed, (i+1)%nodes+1, l.firstErrors())
			}
			dok, dshort := dnsLoad.end()
			dnsOK, dnsShort = dnsOK+dok, dnsShort+dshort
			if dshort > 0 {
				t.Errorf("node %d restarting: %d DNS answers short: %s", i+1, dshort, dnsLoad.firstErrors())
			}
			for j := range before.Instances {
				b, a := before.Instances[j], after.Instances[j]
				if b.ContainerID != a.ContainerID || !b.StartedAt.Equal(a.StartedAt) {
					t.Errorf("node %d: %s restarted", i+1, b.ContainerID)
				}
			}
		}
		report("restart of all 5 agents in turn: 0 containers restarted; load through another node: %d ok, %d failed; DNS from another node: %d full answers, %d short",
			okAll, failedAll, dnsOK, dnsShort)
	})
}

func (h *harness) selfHealing(report func(string, ...any)) {
	t := h.t
	// flaky never restarts, so its health alone decides where traffic goes.
	flaky := strings.Replace(service("flaky", 2, 6060, h.image, ""), "update:", "restart: {policy: never}\nupdate:", 1)
	commit := h.push("flaky", map[string]string{"flaky.yaml": flaky})
	h.waitFor(60*time.Second, "flaky running", func() bool { return h.converged(0, commit, "flaky") })

	// Crash: kill one web instance's process; it comes back in place.
	var victim shoal.Record
	for _, r := range h.records(0) {
		if r.Service == "web" {
			victim = r
		}
	}
	vi := h.nodeIndex(victim.Node)
	restarts := func() int {
		var st nodeStatus
		h.api(vi, "/v1/status", &st)
		for _, in := range st.Instances {
			if in.Service == "web" && in.Index == victim.Slot && in.State == shoal.StateHealthy {
				return in.Restarts
			}
		}
		return -1
	}
	before := restarts()
	l := h.startLoad((vi+1)%nodes, 8080)
	found, err := h.f.KillSlot(context.Background(), vi, "web", victim.Slot)
	if err != nil || !found {
		t.Fatalf("kill web/%d on %s: found %v, %v", victim.Slot, victim.Node, found, err)
	}
	took := h.waitFor(30*time.Second, "the crashed instance restarted and healthy", func() bool { return restarts() > before })
	ok, failed := l.end()
	report("crash (kill -9 one web process) → restarted and healthy in %v; load through another node: %d ok, %d failed", took.Round(time.Millisecond), ok, failed)

	// Health: make one flaky instance fail its check through its own port.
	var sick shoal.Record
	for _, r := range h.records(0) {
		if r.Service == "flaky" {
			sick = r
		}
	}
	srv := func() []string {
		m := new(dns.Msg)
		m.SetQuestion("_http._tcp.flaky.service.shoal.", dns.TypeSRV)
		in, _, err := new(dns.Client).Exchange(m, h.nodes[0].DNS)
		if err != nil {
			return nil
		}
		var out []string
		for _, rr := range in.Answer {
			out = append(out, fmt.Sprintf("%s:%d", rr.(*dns.SRV).Target, rr.(*dns.SRV).Port))
		}
		return out
	}
	sickSRV := fmt.Sprintf("%s.node.shoal.:%d", sick.Node, sick.Port)
	served := func(n int) map[string]int {
		got := map[string]int{}
		for range n {
			if body, err := h.get(0, 6060); err == nil {
				got[body]++
			}
		}
		return got
	}
	sickBody := fmt.Sprintf("hello from flaky/%d on %s", sick.Slot, sick.Node)
	post := func(path string) {
		resp, err := h.http.Post(fmt.Sprintf("http://%s:%d%s", sick.Addr, sick.Port, path), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	post("/fail")
	out := h.waitFor(10*time.Second, "the failing instance out of DNS", func() bool {
		return countHealthy(h.records(0), "flaky") == 1 && len(srv()) == 1 && !slices.Contains(srv(), sickSRV)
	})
	if got := served(30); got[sickBody] != 0 || len(got) != 1 {
		t.Errorf("balancer still sends traffic to the unhealthy instance: %v", got)
	}
	post("/recover")
	back := h.waitFor(10*time.Second, "the instance back in DNS and the balancer", func() bool {
		return countHealthy(h.records(0), "flaky") == 2 && slices.Contains(srv(), sickSRV) && served(20)[sickBody] > 0
	})
	report("health check failing → out of DNS and the balancer in %v; healthy again → back in %v", out.Round(time.Millisecond), back.Round(time.Millisecond))
}

func (h *harness) nodeIndex(name string) int {
	for i, n := range h.nodes {
		if n.Name == name {
			return i
		}
	}
	h.t.Fatalf("no node %s", name)
	return -1
}

// nodeStatus is the part of GET /v1/status the tests read.
type nodeStatus struct {
	Revision string   `json:"revision"`
	Errors   []string `json:"errors"`
	Sync     struct {
		LastError string `json:"last_error"`
	} `json:"sync"`
	Instances []shoal.Instance `json:"instances"`
}

// nodesWith lists, sorted, the addresses of nodes with a healthy instance
// of svc: what <svc>.service.shoal must answer.
func nodesWith(rs []shoal.Record, svc string) []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range rs {
		if r.Service == svc && r.Healthy && !seen[r.Addr] {
			seen[r.Addr] = true
			out = append(out, r.Addr)
		}
	}
	sort.Strings(out)
	return out
}

func (h *harness) isNodeAddr(a string) bool {
	for _, n := range h.nodes {
		if n.Addr == a {
			return true
		}
	}
	return false
}

func countHealthy(rs []shoal.Record, svc string) int {
	n := 0
	for _, r := range rs {
		if r.Service == svc && r.Healthy {
			n++
		}
	}
	return n
}
