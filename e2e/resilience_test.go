package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal/internal/devfleet"
)

// The resilience suite: partitions and outages of any length heal by
// themselves (issue #15). Four agents in network namespaces of their own
// (prefix shres, subnet 10.213.21.0/24, apart from the fleet suite's), a
// web service of four replicas, and steady traffic through node 1. After
// every heal the fleet must reach exactly the plan — every slot healthy on
// its planned node and nowhere else, as every node sees it — within a
// bound; the times are printed as RESILIENCE FIGURES.

const resNodes = 4

// startResilience starts a four-node fleet with extra agent flags and
// deploys web (4 replicas) on it.
func startResilience(t *testing.T, prefix, subnet string, extra ...string) *harness {
	t.Helper()
	dir := t.TempDir()
	if keep := os.Getenv("SHOAL_E2E_DIR"); keep != "" {
		dir = keep + "/" + prefix
	}
	f, err := devfleet.Start(context.Background(), devfleet.Config{
		Nodes: resNodes, Prefix: prefix, Subnet: subnet, Binary: buildShoal(t), Dir: dir,
		Poll: 10 * time.Second, ExtraAgentArgs: extra,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, f, 30)
	h.waitFor(30*time.Second, "4 alive members", func() bool { return len(h.alive(0)) == resNodes })
	commit := h.push("web", map[string]string{"web.yaml": service("web", 4, 8080, h.image, "")})
	h.waitFor(90*time.Second, "web running as planned", func() bool { return h.converged(0, commit) && h.settled() })
	return h
}

// figures collects a test's measurements and prints them at its end.
type figures struct {
	t     *testing.T
	title string
	mu    sync.Mutex
	lines []string
}

func newFigures(t *testing.T, title string) *figures {
	fs := &figures{t: t, title: title}
	t.Cleanup(func() {
		fmt.Println("\nRESILIENCE FIGURES (" + title + ")")
		for _, l := range fs.lines {
			fmt.Println("  " + l)
		}
	})
	return fs
}

func (fs *figures) report(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fs.mu.Lock()
	fs.lines = append(fs.lines, line)
	fs.mu.Unlock()
	fs.t.Log(line)
}

// healBound is how long after the last change the fleet may take to be
// exactly the plan again. The goal is 5 s; the bound leaves room for a
// shared CI machine, and the figures say what it took.
const healBound = 30 * time.Second

// memberStatus is node i's view of member name: its status and address.
func (h *harness) memberStatus(i int, name string) (status, addr string) {
	var ms []struct {
		Name, Status, Addr string
	}
	if h.api(i, "/v1/members", &ms) != nil {
		return "", ""
	}
	for _, m := range ms {
		if m.Name == name {
			return m.Status, m.Addr
		}
	}
	return "gone", ""
}

// loadThrough is startLoad on node i's address as it is now, so a later
// renumbering does not race with the load.
func (h *harness) loadThrough(i, port int) *load {
	url := fmt.Sprintf("http://%s:%d/", h.nodes[i].Addr, port)
	return startLoadFn(func() error { _, err := fetch(h.http, url); return err })
}

// webSRV is node i's DNS answer for web's instances, sorted, and the
// same built from node i's healthy records.
func (h *harness) webSRV(i int) (dnsSays, recordsSay []string) {
	m := new(dns.Msg)
	m.SetQuestion("_http._tcp.web.service.shoal.", dns.TypeSRV)
	if in, _, err := new(dns.Client).Exchange(m, h.nodes[i].DNS); err == nil {
		for _, rr := range in.Answer {
			if srv, ok := rr.(*dns.SRV); ok {
				dnsSays = append(dnsSays, fmt.Sprintf("%s:%d", srv.Target, srv.Port))
			}
		}
	}
	for _, r := range h.records(i) {
		if r.Service == "web" && r.Healthy {
			recordsSay = append(recordsSay, fmt.Sprintf("%s.node.shoal.:%d", r.Node, r.Port))
		}
	}
	slices.Sort(dnsSays)
	slices.Sort(recordsSay)
	return dnsSays, recordsSay
}

// healed waits for exactly the plan on every node after a change and
// returns how long it took; then it checks that every node's DNS names
// exactly the planned instances, and that nothing moves or restarts in
// the next 5 s (no flapping).
func (h *harness) healed(t *testing.T, bound time.Duration, what string) time.Duration {
	t.Helper()
	took := h.waitFor(bound, what, h.settled)
	before := fingerprint(h.records(0))
	for i := range h.nodes {
		if d, r := h.webSRV(i); !slices.Equal(d, r) {
			t.Errorf("node %d: DNS answers %v, its records say %v", i+1, d, r)
		}
	}
	quiet := time.Now().Add(5 * time.Second)
	for time.Now().Before(quiet) {
		if after := fingerprint(h.records(0)); after != before {
			if h.settled() {
				t.Errorf("the fleet moved after settling:\nbefore:\n%s\nafter:\n%s", before, after)
			} else {
				t.Errorf("the fleet left the plan after settling:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return took
}

// partition cuts node cut off for d with traffic through node 0, heals,
// and returns how long the fleet took to be exactly the plan again. The
// majority side must serve all along.
func (h *harness) partition(t *testing.T, cut int, d time.Duration, during func()) time.Duration {
	t.Helper()
	l := h.loadThrough(0, 8080)
	begin := time.Now()
	if err := h.f.Cut(cut); err != nil {
		t.Fatal(err)
	}
	h.waitFor(30*time.Second, "the majority to run the plan without the cut node", func() bool {
		return len(h.alive(0)) == resNodes-1 && h.converged(0, "")
	})
	if during != nil {
		during()
	}
	time.Sleep(time.Until(begin.Add(d))) // the partition's length is the test's subject
	if err := h.f.Heal(cut); err != nil {
		t.Fatal(err)
	}
	t.Logf("link back at %s (UTC; to read beside the agents' logs)", time.Now().UTC().Format("15:04:05.000"))
	healed := h.healed(t, healBound, "exactly the plan on every node after the heal")
	ok, failed := l.end()
	if failed > 4 {
		t.Errorf("%d of %d requests failed on the majority side: %s", failed, ok+failed, l.firstErrors())
	}
	t.Logf("majority side during the partition: %d requests ok, %d failed", ok, failed)
	return healed
}

// TestResilienceShortTimers runs partitions and outages longer than every
// failure, reaping and reconnection timer, shortened through flags so the
// suite fits in CI: a failed member is reaped by gossip after 10 s
// (--reconnect-timeout; Serf's reaper runs every 15 s), a departed one
// after 10 s (--tombstone-timeout), the restart grace is 15 s, the
// handoff timeout 10 s, the rejoin loop's ceiling 5 s.
func TestResilienceShortTimers(t *testing.T) {
	h := startResilience(t, "shres", "10.213.21.0/24", "--reconnect-timeout", "10s", "--tombstone-timeout", "10s")
	fig := newFigures(t, "4 nodes, shortened timers")
	top := t

	t.Run("partition-past-reaping", func(t *testing.T) {
		h.t = t
		const cut = resNodes - 1
		name := h.nodes[cut].Name
		took := h.partition(t, cut, 45*time.Second, func() {
			// Longer than every timer: gossip forgets the cut node.
			h.waitFor(40*time.Second, "the cut node reaped by the majority", func() bool {
				st, _ := h.memberStatus(0, name)
				return st == "gone"
			})
		})
		fig.report("partition of 1 node for 45 s, reaped by gossip after ~25 s: heal → exactly the plan in %v", took.Round(time.Millisecond))
	})

	t.Run("flapping-link", func(t *testing.T) {
		h.t = t
		const flap = 2
		l := h.loadThrough(0, 8080)
		end := time.Now().Add(time.Minute)
		changes := 0
		for time.Now().Before(end) {
			if err := h.f.Cut(flap); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second) // the link's rhythm is the test's subject
			if err := h.f.Heal(flap); err != nil {
				t.Fatal(err)
			}
			changes += 2
			time.Sleep(3 * time.Second)
		}
		healed := h.healed(t, healBound, "exactly the plan after the last change")
		ok, failed := l.end()
		fig.report("link of 1 node down 3 s / up 3 s for 60 s (%d changes): exactly the plan %v after the last change; through node 1: %d ok, %d failed",
			changes, healed.Round(time.Millisecond), ok, failed)
		h.agentsRunning(t)
	})

	t.Run("one-way-cut", func(t *testing.T) {
		h.t = t
		const cut = 1
		l := h.loadThrough(0, 8080)
		if err := h.f.CutInbound(cut); err != nil {
			t.Fatal(err)
		}
		h.waitFor(30*time.Second, "node 1 to see the one-way cut node fail", func() bool {
			st, _ := h.memberStatus(0, h.nodes[cut].Name)
			return st != "alive"
		})
		time.Sleep(30 * time.Second) // the cut's length is the test's subject
		if err := h.f.HealInbound(cut); err != nil {
			t.Fatal(err)
		}
		healed := h.healed(t, healBound, "exactly the plan after the one-way cut")
		ok, failed := l.end()
		fig.report("one-way cut of 1 node (it sends, receives nothing) for 30 s: heal → exactly the plan in %v; through node 1: %d ok, %d failed",
			healed.Round(time.Millisecond), ok, failed)
		h.agentsRunning(t)
	})

	t.Run("renumbered-while-down", func(t *testing.T) {
		h.t = t
		const moved = resNodes - 1
		name, old := h.nodes[moved].Name, h.nodes[moved].Addr
		l := h.loadThrough(0, 8080)
		// A reboot: agent and containers gone, and a new DHCP lease.
		h.f.KillAgent(moved)
		if err := h.f.RemoveContainers(context.Background(), moved); err != nil {
			t.Fatal(err)
		}
		h.waitFor(30*time.Second, "the majority to run the plan without it", func() bool {
			return len(h.alive(0)) == resNodes-1 && h.converged(0, "")
		})
		if err := h.f.Renumber(moved, byte(100+moved)); err != nil {
			t.Fatal(err)
		}
		h.nodes = h.f.Nodes()
		if err := h.f.StartAgent(moved); err != nil {
			t.Fatal(err)
		}
		back := h.healed(t, 60*time.Second, "exactly the plan with the renumbered node")
		ok, failed := l.end()
		for i := range h.nodes {
			if st, addr := h.memberStatus(i, name); st != "alive" || addr != h.nodes[moved].Addr {
				t.Errorf("node %d sees %s %s at %s, want alive at %s", i+1, name, st, addr, h.nodes[moved].Addr)
			}
			for _, r := range h.records(i) {
				if r.Addr == old {
					t.Errorf("node %d holds a record at the old address %s: %+v", i+1, old, r)
				}
			}
		}
		fig.report("node renumbered while down (%s → %s): agent start → exactly the plan in %v; through node 1: %d ok, %d failed",
			old, h.nodes[moved].Addr, back.Round(time.Millisecond), ok, failed)
	})

	t.Run("whole-site-restart", func(t *testing.T) {
		h.t = t
		// Power lost everywhere: agents and containers gone. They come
		// back with --join naming seeds that no longer exist.
		var wg sync.WaitGroup
		for i := range h.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); h.f.KillAgent(i) }()
		}
		wg.Wait()
		for i := range h.nodes {
			if err := h.f.RemoveContainers(context.Background(), i); err != nil {
				t.Fatal(err)
			}
		}
		h.f.SetJoin([]string{"10.213.21.200:7946", "10.213.21.201:7946"})
		for i := range h.nodes {
			if err := h.f.StartAgent(i); err != nil {
				t.Fatal(err)
			}
		}
		took := h.healed(t, 90*time.Second, "the fleet re-formed from persisted peers, exactly the plan")
		fig.report("whole site restarted (agents and containers), seeds gone: start → one fleet, exactly the plan in %v", took.Round(time.Millisecond))
	})
	h.t = top
}

// agentsRunning fails the test when an agent died.
func (h *harness) agentsRunning(t *testing.T) {
	t.Helper()
	for i, n := range h.nodes {
		c, err := net.DialTimeout("tcp", n.API, time.Second)
		if err != nil {
			t.Errorf("node %d's agent does not answer: %v", i+1, err)
			continue
		}
		c.Close()
	}
}

// TestResilienceLongPartition cuts one node off for longer than 2
// minutes with the agents' default timers, and measures heal → exactly
// the plan. SHOAL_RESIL_PARTITIONS lists other lengths (bench/resilience.sh
// runs 1m,3m,10m).
func TestResilienceLongPartition(t *testing.T) {
	lengths := []time.Duration{130 * time.Second}
	if env := os.Getenv("SHOAL_RESIL_PARTITIONS"); env != "" {
		lengths = nil
		for _, s := range strings.Split(env, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(s))
			if err != nil {
				t.Fatalf("SHOAL_RESIL_PARTITIONS: %v", err)
			}
			lengths = append(lengths, d)
		}
	}
	h := startResilience(t, "shrel", "10.213.23.0/24")
	fig := newFigures(t, "4 nodes, default timers")
	top := t
	for _, d := range lengths {
		t.Run(d.String(), func(t *testing.T) {
			h.t = t
			took := h.partition(t, resNodes-1, d, nil)
			fig.report("partition of 1 node for %v (default timers): heal → exactly the plan in %v", d, took.Round(time.Millisecond))
		})
	}
	h.t = top
}
