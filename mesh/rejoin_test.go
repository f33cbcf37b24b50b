package mesh

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

func TestRejoinDelay(t *testing.T) {
	lo, hi := time.Second, 10*time.Second
	for _, tc := range []struct {
		n        int
		u        float64
		min, max time.Duration
	}{
		{0, 0, 500 * time.Millisecond, 500 * time.Millisecond},
		{0, 0.999, 500 * time.Millisecond, time.Second},
		{1, 0, time.Second, time.Second},
		{3, 0.5, 6 * time.Second, 6 * time.Second},
		{4, 0, 5 * time.Second, 5 * time.Second}, // 16 s capped at 10 s
		{1000, 0.999, 5 * time.Second, 10 * time.Second},
	} {
		got := rejoinDelay(tc.n, lo, hi, tc.u)
		if got < tc.min || got > tc.max {
			t.Errorf("rejoinDelay(%d, u=%v) = %v, want within [%v, %v]", tc.n, tc.u, got, tc.min, tc.max)
		}
	}
}

func TestRejoinTargets(t *testing.T) {
	const self, selfAddr = "a", "10.0.0.1:7946"
	alive := func(name, addr string) memberView { return memberView{name, addr, serf.StatusAlive} }
	for _, tc := range []struct {
		name          string
		seeds         []string
		known         []knownPeer
		members       []memberView
		want, missing []string
	}{
		{name: "first node of a fleet: nothing to do", members: []memberView{alive(self, selfAddr)}},
		{name: "fresh start: the seeds", seeds: []string{"10.0.0.2:7946", selfAddr},
			members: []memberView{alive(self, selfAddr)}, want: []string{"10.0.0.2:7946"}},
		{name: "all known alive: nothing, whatever the seeds", seeds: []string{"10.0.0.9:7946"},
			known:   []knownPeer{{Name: "b", Addr: "10.0.0.2:7946"}},
			members: []memberView{alive(self, selfAddr), alive("b", "10.0.0.2:7946")}},
		{name: "a failed member: its address and the seeds", seeds: []string{"10.0.0.2:7946", "10.0.0.9:7946"},
			known:   []knownPeer{{Name: "b", Addr: "10.0.0.2:7946"}, {Name: "c", Addr: "10.0.0.3:7946"}},
			members: []memberView{alive(self, selfAddr), alive("b", "10.0.0.2:7946"), {"c", "10.0.0.3:7946", serf.StatusFailed}},
			want:    []string{"10.0.0.3:7946", "10.0.0.9:7946"}, missing: []string{"c"}},
		{name: "reaped by Serf, still remembered: tried",
			known:   []knownPeer{{Name: "b", Addr: "10.0.0.2:7946"}, {Name: "c", Addr: "10.0.0.3:7946"}},
			members: []memberView{alive(self, selfAddr), alive("b", "10.0.0.2:7946")},
			want:    []string{"10.0.0.3:7946"}, missing: []string{"c"}},
		{name: "left, and gossip says so: not chased",
			known:   []knownPeer{{Name: "b", Addr: "10.0.0.2:7946"}, {Name: "c", Addr: "10.0.0.3:7946", Left: true}},
			members: []memberView{alive(self, selfAddr), alive("b", "10.0.0.2:7946"), {"c", "10.0.0.3:7946", serf.StatusLeft}}},
		{name: "after a restart: every remembered member, left ones too",
			known:   []knownPeer{{Name: "b", Addr: "10.0.0.2:7946"}, {Name: "c", Addr: "10.0.0.3:7946", Left: true}},
			members: []memberView{alive(self, selfAddr)},
			want:    []string{"10.0.0.2:7946", "10.0.0.3:7946"}, missing: []string{"b", "c"}},
		{name: "a failed member gossip knows and this node did not note",
			members: []memberView{alive(self, selfAddr), alive("b", "10.0.0.2:7946"), {"c", "10.0.0.3:7946", serf.StatusFailed}},
			want:    []string{"10.0.0.3:7946"}, missing: []string{"c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, missing := rejoinTargets(self, selfAddr, tc.seeds, tc.known, tc.members)
			if !slices.Equal(got, tc.want) || !slices.Equal(missing, tc.missing) {
				t.Errorf("got targets %v missing %v, want %v and %v", got, missing, tc.want, tc.missing)
			}
		})
	}
}

func TestKnownPeersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers.json")
	k, err := loadKnown(path)
	if err != nil || len(k.list()) != 0 {
		t.Fatalf("missing file: %v %v", k.list(), err)
	}
	for _, step := range []struct {
		t       serf.EventType
		name    string
		addr    string
		changed bool
	}{
		{serf.EventMemberJoin, "b", "10.0.0.2:7946", true},
		{serf.EventMemberJoin, "c", "10.0.0.3:7946", true},
		{serf.EventMemberUpdate, "b", "10.0.0.2:7946", false},
		{serf.EventMemberFailed, "b", "10.0.0.2:7946", false},
		{serf.EventMemberJoin, "b", "10.0.0.12:7946", true},  // renumbered: the old address goes
		{serf.EventMemberReap, "b", "10.0.0.12:7946", false}, // failed and reaped: still tried
		{serf.EventMemberLeave, "c", "10.0.0.3:7946", true},
		{serf.EventMemberReap, "c", "10.0.0.3:7946", true}, // left and reaped: forgotten
		{serf.EventMemberLeave, "d", "10.0.0.4:7946", true},
	} {
		if got := k.note(step.t, step.name, step.addr); got != step.changed {
			t.Errorf("%v %s: changed %v, want %v", step.t, step.name, got, step.changed)
		}
	}
	if err := k.save("10.0.0.1:7946"); err != nil {
		t.Fatal(err)
	}
	k2, err := loadKnown(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []knownPeer{{Name: "b", Addr: "10.0.0.12:7946"}, {Name: "d", Addr: "10.0.0.4:7946", Left: true}}
	if got := k2.list(); !slices.Equal(got, want) || k2.prevSelf != "10.0.0.1:7946" {
		t.Fatalf("reloaded %v self %q, want %v", got, k2.prevSelf, want)
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k3, err := loadKnown(path); err == nil || len(k3.list()) != 0 {
		t.Fatalf("a damaged file: %v, %v", k3.list(), err)
	}
}

// runAt starts an agent at exactly cfg's address and port (a restart at
// the same place, or a renumbering to another).
func runAt(t *testing.T, cfg Config) *node {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{m: m, cancel: cancel, done: make(chan struct{})}
	go func() { m.Run(ctx); close(n.done) }()
	t.Cleanup(n.stop)
	return n
}

// kill stops an agent as a crash would: no leave, no restart notice.
func (n *node) kill() {
	n.cancel()
	<-n.done
	n.m.Kill()
}

func sees(n *node, want int) bool { return len(n.m.Nodes()) == want }

func memberAt(n *node, name string) string {
	for _, mb := range n.m.serf.Members() {
		if mb.Name == name && mb.Status == serf.StatusAlive {
			return mb.Addr.String() + ":" + strconv.Itoa(int(mb.Port))
		}
	}
	return ""
}

// TestRejoinAfterReap: a member gone longer than ReconnectTimeout is
// reaped by Serf, which then never tries it again; the others still do,
// at its last address, so it is back as soon as it answers, though it
// knows nobody and was given no seed.
func TestRejoinAfterReap(t *testing.T) {
	key := newKey(t)
	short := Config{Key: key, BindAddr: "127.0.0.1", ReconnectTimeout: time.Second, RejoinMaxInterval: 2 * time.Second}
	cfg := func(name string, join ...string) Config {
		c := short
		c.NodeName, c.BindPort, c.Join = name, freeUDPTCPPort(t), join
		return c
	}
	a := runAt(t, cfg("a"))
	b := runAt(t, cfg("b", a.m.LocalAddr()))
	cc := cfg("c", a.m.LocalAddr())
	c := runAt(t, cc)
	waitFor(t, 15*time.Second, "three members", func() bool { return sees(a, 3) && sees(b, 3) && sees(c, 3) })
	c.kill()
	waitFor(t, 30*time.Second, "c reaped by Serf", func() bool {
		for _, mb := range a.m.serf.Members() {
			if mb.Name == "c" {
				return false
			}
		}
		return true
	})
	cc.Join = nil // no seed: only the others can bring it back
	c = runAt(t, cc)
	waitFor(t, 15*time.Second, "c back in the fleet", func() bool { return sees(a, 3) && sees(b, 3) && sees(c, 3) })
}

// TestWholeSiteRestartFromPeersFile: every agent stops at once and comes
// back with its only seed gone; the peers each one remembered bring the
// fleet together again.
func TestWholeSiteRestartFromPeersFile(t *testing.T) {
	key := newKey(t)
	dir := t.TempDir()
	seed := runAt(t, Config{NodeName: "seed", Key: key, BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t)})
	var cfgs []Config
	var fleet []*node
	for i := range 3 {
		name := "n" + strconv.Itoa(i)
		c := Config{NodeName: name, Key: key, BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t),
			Join: []string{seed.m.LocalAddr()}, PeersFile: filepath.Join(dir, name, "peers.json")}
		cfgs = append(cfgs, c)
		fleet = append(fleet, runAt(t, c))
	}
	waitFor(t, 15*time.Second, "four members", func() bool {
		return sees(fleet[0], 4) && sees(fleet[1], 4) && sees(fleet[2], 4)
	})
	seed.stop() // gone for good (left)
	for _, n := range fleet {
		n.kill()
	}
	start := time.Now()
	fleet = fleet[:0]
	for _, c := range cfgs {
		fleet = append(fleet, runAt(t, c))
	}
	waitFor(t, 20*time.Second, "the three together again, each Joined", func() bool {
		for _, n := range fleet {
			if !sees(n, 3) || !n.m.Joined() {
				return false
			}
		}
		return true
	})
	t.Logf("re-formed from persisted peers in %v", time.Since(start).Round(time.Millisecond))
}

// TestRenumberedNodeRejoins: a node that comes back at another address
// under its name, at once (before its peers saw it fail) or later, is a
// member again at the new address only; the old one is forgotten, and
// records are believed at the new address.
func TestRenumberedNodeRejoins(t *testing.T) {
	for _, wait := range []bool{false, true} {
		t.Run(map[bool]string{false: "at-once", true: "after-failure"}[wait], func(t *testing.T) {
			key := newKey(t)
			dir := t.TempDir()
			a := runAt(t, Config{NodeName: "a", Key: key, BindAddr: "127.0.0.2", BindPort: freePortOn(t, "127.0.0.2")})
			b := runAt(t, Config{NodeName: "b", Key: key, BindAddr: "127.0.0.3", BindPort: freePortOn(t, "127.0.0.3"), Join: []string{a.m.LocalAddr()}})
			cc := Config{NodeName: "c", Key: key, BindAddr: "127.0.0.4", BindPort: freePortOn(t, "127.0.0.4"),
				Join: []string{a.m.LocalAddr()}, PeersFile: filepath.Join(dir, "peers.json")}
			c := runAt(t, cc)
			waitFor(t, 15*time.Second, "three members", func() bool { return sees(a, 3) && sees(b, 3) && sees(c, 3) })
			old := c.m.LocalAddr()
			c.kill()
			if wait {
				waitFor(t, 15*time.Second, "c failed", func() bool { return sees(a, 2) && sees(b, 2) })
			}
			// Renumbered, and its seed is gone from the config: only the
			// persisted peers lead it back.
			cc.BindAddr, cc.BindPort, cc.Join = "127.0.0.5", freePortOn(t, "127.0.0.5"), nil
			c = runAt(t, cc)
			c.m.SetLocalRecords(recs("c", "127.0.0.5", 1))
			waitFor(t, 30*time.Second, "c back at its new address", func() bool {
				return memberAt(a, "c") == c.m.LocalAddr() && memberAt(b, "c") == c.m.LocalAddr() && sees(c, 3) &&
					recordsOf(a, "c") == 1 && recordsOf(b, "c") == 1
			})
			for _, n := range []*node{a, b} {
				for _, mb := range n.m.serf.Members() {
					if mb.Name == "c" && mb.Addr.String()+":"+strconv.Itoa(int(mb.Port)) == old {
						t.Errorf("%s still knows c at %s", n.m.cfg.NodeName, old)
					}
				}
			}
		})
	}
}

// recs is n healthy records of service web on node at addr.
func recs(node, addr string, n int) []shoal.Record {
	var out []shoal.Record
	for i := range n {
		out = append(out, shoal.Record{Service: "web", Slot: i, Node: node, Addr: addr, PortName: "http", Port: 20000 + i, Revision: "r1", Healthy: true})
	}
	return out
}
