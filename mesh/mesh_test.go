package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

func freeUDPTCPPort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 50; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

type node struct {
	m      *Mesh
	cancel context.CancelFunc
	done   chan struct{}
	annMu  sync.Mutex
	ann    []string
}

func (n *node) stop() {
	n.cancel()
	<-n.done
	n.m.Close()
}

func startNode(t *testing.T, name string, key []byte, join ...string) *node {
	t.Helper()
	n := &node{done: make(chan struct{})}
	m, err := New(Config{
		NodeName: name, BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t), Join: join, Key: key,
		CPU: 2, Memory: 4 << 30, Labels: map[string]string{"zone": "a"}, APIPort: 7900,
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnAnnounce: func(c string) { n.annMu.Lock(); n.ann = append(n.ann, c); n.annMu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	n.m = m
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { m.Run(ctx); close(n.done) }()
	t.Cleanup(n.stop)
	return n
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func alive(n *node) int { return len(n.m.Nodes()) }

func recordsOf(n *node, node string) int {
	c := 0
	for _, r := range n.m.Records() {
		if r.Node == node {
			c++
		}
	}
	return c
}

func TestMembershipRecordsAndFailure(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	c := startNode(t, "c", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "3 alive members everywhere", func() bool { return alive(a) == 3 && alive(b) == 3 && alive(c) == 3 })

	// Tags round-trip.
	b.m.SetRevision("0123456789abcdef0123456789abcdef01234567")
	waitFor(t, 5*time.Second, "revision tag", func() bool {
		for _, mb := range a.m.Members() {
			if mb.Node.Name == "b" {
				return mb.Revision == "0123456789abcdef0123456789abcdef01234567" && mb.Node.CPU == 2 && mb.Node.Memory == 4<<30 && mb.Node.Labels["zone"] == "a" && mb.APIPort == 7900
			}
		}
		return false
	})

	// Records propagate.
	recs := []shoal.Record{{Service: "web", Slot: 0, Addr: "127.0.0.1", PortName: "http", Port: 20000, Healthy: true}}
	b.m.SetLocalRecords(recs)
	waitFor(t, 5*time.Second, "b's record on a and c", func() bool { return recordsOf(a, "b") == 1 && recordsOf(c, "b") == 1 })

	// A big set (over one event) arrives by pull.
	var big []shoal.Record
	for i := 0; i < 60; i++ {
		big = append(big, shoal.Record{Service: fmt.Sprintf("svc-%02d", i), Slot: i, Addr: "127.0.0.1", PortName: "http", Port: 20000 + i, Revision: strings.Repeat("f", 40), Healthy: i%2 == 0})
	}
	c.m.SetLocalRecords(big)
	waitFor(t, 10*time.Second, "c's 60 records on a", func() bool { return recordsOf(a, "c") == 60 })

	// A hard stop (no leave) drops the member's records.
	c.m.Kill()
	waitFor(t, 10*time.Second, "c's records gone from a", func() bool { return recordsOf(a, "c") == 0 && alive(a) == 2 })
}

func TestAntiEntropyHealsLostEvent(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "joined", func() bool { return alive(a) == 2 })
	b.m.suppressEvents(true) // the change travels only as a digest in b's tags
	b.m.SetLocalRecords([]shoal.Record{{Service: "web", Slot: 3, Addr: "127.0.0.1", PortName: "http", Port: 20003, Healthy: true}})
	waitFor(t, 10*time.Second, "a pulls b's set", func() bool { return recordsOf(a, "b") == 1 })
}

func TestWrongKeyCannotJoin(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	a := startNode(t, "a", key)
	b := startNode(t, "b", key, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "keyed join", func() bool { return alive(a) == 2 })
	other := []byte("ffffffffffffffffffffffffffffffff")
	m, err := New(Config{NodeName: "intruder", BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t), Key: other, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if n, err := m.serf.Join([]string{a.m.LocalAddr()}, true); err == nil && n > 0 {
		t.Fatalf("node with the wrong key joined %d", n)
	}
	nokey, err := New(Config{NodeName: "plain", BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer nokey.Kill()
	if n, err := nokey.serf.Join([]string{a.m.LocalAddr()}, true); err == nil && n > 0 {
		t.Fatalf("node without a key joined %d", n)
	}
	if alive(a) != 2 || alive(b) != 2 {
		t.Errorf("members: %d %d", alive(a), alive(b))
	}
}

func TestAnnounce(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	c := startNode(t, "c", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "joined", func() bool { return alive(a) == 3 })
	commit := "89abcdef0123456789abcdef0123456789abcdef"
	if err := a.m.Announce(commit); err != nil {
		t.Fatal(err)
	}
	got := func(n *node) []string { n.annMu.Lock(); defer n.annMu.Unlock(); return append([]string(nil), n.ann...) }
	waitFor(t, 5*time.Second, "announce heard", func() bool { return len(got(b)) == 1 && len(got(c)) == 1 })
	if got(b)[0] != commit || len(got(a)) != 0 {
		t.Errorf("b heard %v, a heard its own %v", got(b), got(a))
	}
}

func TestTagLimit(t *testing.T) {
	labels := map[string]string{}
	for i := 0; i < 12; i++ {
		labels[fmt.Sprintf("topology.example.com/label-%02d", i)] = strings.Repeat("v", 12)
	}
	_, err := New(Config{NodeName: "x", BindAddr: "127.0.0.1", BindPort: freeUDPTCPPort(t), Labels: labels})
	if err == nil || !strings.Contains(err.Error(), "512-byte limit") {
		t.Fatalf("want tag limit error, got %v", err)
	}
	// A realistic maximum: a handful of labels with a full revision fits.
	ok := map[string]string{"zone": "eu-west-1a", "region": "eu-west-1", "tier": "backend", "arch": "amd64", "rack": "r12", "site": "factory-7"}
	tags := encodeTags(nodeTags{CPU: 64, Memory: 512 << 30, Labels: ok, APIPort: 7900, Revision: strings.Repeat("a", 40), Digest: strings.Repeat("d", 16)})
	if n := tagsSize(tags); n > maxTagBytes {
		t.Errorf("realistic tags take %d bytes", n)
	}
}

func TestRateWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var w rateWindow
	for i := 0; i < 30; i++ {
		w.add(t0.Add(time.Duration(i) * 100 * time.Millisecond)) // 30 events over 3 s
	}
	if r := w.rate(t0.Add(3 * time.Second)); r != 3 {
		t.Errorf("rate = %v, want 3/s", r)
	}
	if r := w.rate(t0.Add(20 * time.Second)); r != 0 {
		t.Errorf("stale rate = %v", r)
	}
}

func FuzzDecodeSet(f *testing.F) {
	f.Add(encodeSet("n1", []shoal.Record{{Service: "web", Slot: 1, Addr: "10.0.0.1", PortName: "http", Port: 80, Healthy: true}}))
	f.Add([]byte(`{"node":"x","r":[{"s":"a","p":-1}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		set, rs, err := decodeSet(b)
		if err == nil {
			for _, r := range rs {
				if r.Node != set.Node || r.Port < 0 {
					t.Fatalf("bad record accepted: %+v", r)
				}
			}
		}
	})
}

func FuzzDecodeTags(f *testing.F) {
	f.Add("1500", "2048", "zone=a,tier=b", "7900")
	f.Fuzz(func(t *testing.T, c, m, l, a string) {
		tg := decodeTags(map[string]string{"c": c, "m": m, "l": l, "a": a})
		if tg.CPU < 0 || tg.Memory < 0 || tg.APIPort < 0 || tg.APIPort > 65535 {
			t.Fatalf("bad tags accepted: %+v", tg)
		}
	})
}

// TestPauseKeepsRecords: a node that pauses to restart keeps its records
// and its place in Nodes on its peers for the grace period; then they go.
// Also with no tag: the announcement alone is enough.
func TestPauseKeepsRecords(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "joined", func() bool { return alive(a) == 2 })
	b.m.SetLocalRecords([]shoal.Record{{Service: "web", Slot: 0, Addr: "127.0.0.1", PortName: "http", Port: 20000, Healthy: true}})
	waitFor(t, 5*time.Second, "record", func() bool { return recordsOf(a, "b") == 1 })
	a.m.cfg.RestartGrace = 3 * time.Second
	b.cancel()
	<-b.done
	if err := b.m.Pause(); err != nil {
		t.Fatal(err)
	}
	// Pause returns once its peers have heard, not when the tag may have
	// spread: a's word is in by now.
	a.m.mu.Lock()
	heard := a.m.saidRestart("b")
	a.m.mu.Unlock()
	if !heard {
		t.Fatal("Pause returned before a heard of the restart")
	}
	waitFor(t, 10*time.Second, "b seen as restarting", func() bool {
		for _, mb := range a.m.Members() {
			if mb.Node.Name == "b" {
				return mb.Status == "restarting"
			}
		}
		return false
	})
	if recordsOf(a, "b") != 1 || len(a.m.Nodes()) != 2 {
		t.Fatalf("restarting node lost its records or place: %d records, %d nodes", recordsOf(a, "b"), len(a.m.Nodes()))
	}
	waitFor(t, 10*time.Second, "grace over", func() bool { return recordsOf(a, "b") == 0 && len(a.m.Nodes()) == 1 })
}

// TestFalseFailureRestoresWithoutPull: a member seen failed loses its
// records at once; when it turns out alive, advertising the set it had,
// the records come back from memory, with no pull — under load, false
// failures must not feed themselves with fleet-wide queries.
func TestFalseFailureRestoresWithoutPull(t *testing.T) {
	a := startNode(t, "a", nil)
	b := startNode(t, "b", nil, a.m.LocalAddr())
	waitFor(t, 5*time.Second, "joined", func() bool { return alive(a) == 2 })
	b.m.SetLocalRecords([]shoal.Record{{Service: "web", Slot: 1, Addr: "127.0.0.1", PortName: "http", Port: 20001, Healthy: true}})
	waitFor(t, 10*time.Second, "a holds b's set", func() bool { return recordsOf(a, "b") == 1 })
	pulls := a.m.pulls.Load()

	// What Serf delivers when a probe of b times out.
	a.m.handle(serf.MemberEvent{Type: serf.EventMemberFailed, Members: []serf.Member{{Name: "b", Status: serf.StatusFailed}}})
	if n := recordsOf(a, "b"); n != 0 {
		t.Fatalf("b's records after its failure: %d, want none at once", n)
	}
	waitFor(t, 5*time.Second, "b's records back", func() bool { return recordsOf(a, "b") == 1 })
	if n := a.m.pulls.Load() - pulls; n != 0 {
		t.Errorf("%d pulls to get back a set a already had", n)
	}

	// Back with a different set (the event lost): that one is pulled.
	a.m.handle(serf.MemberEvent{Type: serf.EventMemberFailed, Members: []serf.Member{{Name: "b", Status: serf.StatusFailed}}})
	b.m.suppressEvents(true)
	b.m.SetLocalRecords([]shoal.Record{
		{Service: "web", Slot: 1, Addr: "127.0.0.1", PortName: "http", Port: 20001, Healthy: true},
		{Service: "web", Slot: 2, Addr: "127.0.0.1", PortName: "http", Port: 20002, Healthy: true}})
	waitFor(t, 10*time.Second, "b's new set pulled", func() bool { return recordsOf(a, "b") == 2 })
	if a.m.pulls.Load() == pulls {
		t.Error("a new set came back without a pull")
	}
}

// TestAnnouncedIsBounded: the commits remembered as announced stay within
// maxAnnounced, the oldest forgotten first, and a repeat is seen.
func TestAnnouncedIsBounded(t *testing.T) {
	m := &Mesh{announced: map[string]bool{}}
	commit := func(i int) string { return fmt.Sprintf("%040x", i) }
	for i := range maxAnnounced + 10 {
		if m.markAnnounced(commit(i)) {
			t.Fatalf("commit %d seen before it was announced", i)
		}
	}
	if !m.markAnnounced(commit(maxAnnounced + 9)) {
		t.Error("the latest commit announced again went unnoticed")
	}
	if len(m.announced) != maxAnnounced || len(m.annOrder) != maxAnnounced {
		t.Errorf("remembers %d (%d in order), want %d", len(m.announced), len(m.annOrder), maxAnnounced)
	}
	if m.markAnnounced(commit(0)) {
		t.Error("the oldest commit is still remembered")
	}
}
