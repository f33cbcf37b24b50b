package mesh

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

func newKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func b64(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// TestPlaintextGossipRefusedOffLoopback: without a key, gossip binds
// loopback only, unless the operator says it may go in clear.
func TestPlaintextGossipRefusedOffLoopback(t *testing.T) {
	port := freePortOn(t, "127.0.0.1")
	_, err := New(Config{NodeName: "open", BindAddr: "0.0.0.0", BindPort: port, Logger: quiet})
	if !errors.Is(err, ErrPlaintextGossip) {
		t.Fatalf("New on 0.0.0.0 without a key: %v, want ErrPlaintextGossip", err)
	}
	m, err := New(Config{NodeName: "open", BindAddr: "0.0.0.0", BindPort: port, InsecureGossip: true, Logger: quiet})
	if err != nil {
		t.Fatalf("with InsecureGossip: %v", err)
	}
	m.Kill()
	m, err = New(Config{NodeName: "keyed", BindAddr: "0.0.0.0", BindPort: port, Key: newKey(t), Logger: quiet})
	if err != nil {
		t.Fatalf("with a key: %v", err)
	}
	m.Kill()
}

// TestKeyRotationLiveFleet rotates the gossip key of a running fleet of
// three — install the new key, use it, remove the old — and the fleet
// keeps gossiping throughout; then a member that has only the new key
// joins, one with only the old key cannot, and a restarted member comes
// back with the rotated key from its keyring file although its config
// still names the old one.
func TestKeyRotationLiveFleet(t *testing.T) {
	k1, k2 := newKey(t), newKey(t)
	dir := t.TempDir()
	start := func(name string, key []byte, join ...string) *node {
		return startAgent(t, Config{NodeName: name, Key: key, Join: join, KeyringFile: filepath.Join(dir, name, "keyring.json")})
	}
	a := start("a", k1)
	b := start("b", k1, a.m.LocalAddr())
	c := start("c", k1, a.m.LocalAddr())
	fleet := []*node{a, b, c}
	allAlive := func(n int) func() bool {
		return func() bool {
			for _, x := range fleet {
				if alive(x) != n {
					return false
				}
			}
			return true
		}
	}
	waitFor(t, 10*time.Second, "3 alive", allAlive(3))
	publish := func(from *node, port int) {
		t.Helper()
		rec := shoal.Record{Service: "web", Slot: port, Addr: "127.0.0.1", PortName: "http", Port: port, Healthy: true}
		from.m.SetLocalRecords([]shoal.Record{rec})
		for _, x := range fleet {
			if x == from {
				continue
			}
			waitFor(t, 10*time.Second, "record reaches "+x.m.cfg.NodeName, func() bool {
				return slices.ContainsFunc(x.m.Records(), func(r shoal.Record) bool { return r.Port == port })
			})
		}
	}

	if st, err := a.m.InstallKey(b64(k2)); err != nil || st.Responses != 3 {
		t.Fatalf("install: %+v, %v", st, err)
	}
	if st, err := c.m.ListKeys(); err != nil || st.Keys[b64(k2)] != 3 || st.Keys[b64(k1)] != 3 || st.Primary[b64(k1)] != 3 {
		t.Fatalf("list after install: %+v, %v", st, err)
	}
	publish(b, 20001)
	if st, err := b.m.UseKey(b64(k2)); err != nil || st.Responses != 3 {
		t.Fatalf("use: %+v, %v", st, err)
	}
	if st, err := a.m.ListKeys(); err != nil || st.Primary[b64(k2)] != 3 {
		t.Fatalf("list after use: %+v, %v", st, err)
	}
	publish(c, 20002)
	if st, err := c.m.RemoveKey(b64(k1)); err != nil {
		t.Fatalf("remove: %+v, %v", st, err)
	}
	if st, err := a.m.ListKeys(); err != nil || len(st.Keys) != 1 || st.Keys[b64(k2)] != 3 || st.Primary[b64(k2)] != 3 {
		t.Fatalf("list after rotation: %+v, %v", st, err)
	}
	publish(a, 20003)
	if _, err := a.m.RemoveKey(b64(k2)); err == nil {
		t.Fatal("removing the primary key succeeded")
	}
	if _, err := a.m.InstallKey("not base64"); err == nil {
		t.Fatal("installing garbage succeeded")
	}

	// Every member's keyring file holds the new key alone.
	for _, name := range []string{"a", "b", "c"} {
		keys, err := ReadKeyringFile(filepath.Join(dir, name, "keyring.json"))
		if err != nil || len(keys) != 1 || !bytes.Equal(keys[0], k2) {
			t.Fatalf("%s keyring file: %d keys, %v", name, len(keys), err)
		}
		if fi, err := os.Stat(filepath.Join(dir, name, "keyring.json")); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s keyring file mode: %v %v", name, fi.Mode(), err)
		}
	}

	// Only the old key: no way in.
	old := startAgent(t, Config{NodeName: "old", Key: k1})
	if n, err := old.m.serf.Join([]string{a.m.LocalAddr()}, true); err == nil && n > 0 {
		t.Fatalf("a member with the removed key joined (%d contacted)", n)
	}
	// The new key: in.
	d := start("d", k2, a.m.LocalAddr())
	fleet = append(fleet, d)
	waitFor(t, 10*time.Second, "4 alive with the new key", allAlive(4))
	publish(d, 20004)

	// c restarts with the old key in its config: its keyring file wins.
	c.stop()
	fleet = []*node{a, b, d}
	waitFor(t, 15*time.Second, "c gone", allAlive(3))
	c2 := start("c", k1, a.m.LocalAddr())
	fleet = append(fleet, c2)
	waitFor(t, 10*time.Second, "c back with the rotated key", allAlive(4))
}

// TestRecordsOnlyAtSendersAddress: a member's records count only at its
// own advertised address; one it publishes for another host is dropped.
func TestRecordsOnlyAtSendersAddress(t *testing.T) {
	a := startAgent(t, Config{NodeName: "a"})
	b := startAgent(t, Config{NodeName: "b", BindAddr: "127.0.0.2", Join: []string{a.m.LocalAddr()}})
	waitFor(t, 10*time.Second, "joined", func() bool { return alive(a) == 2 && alive(b) == 2 })
	b.m.SetLocalRecords([]shoal.Record{
		{Service: "web", Slot: 0, Addr: "127.0.0.2", PortName: "http", Port: 20000, Healthy: true},
		{Service: "web", Slot: 1, Addr: "10.66.0.1", PortName: "http", Port: 20001, Healthy: true},
		{Service: "web", Slot: 2, Addr: "127.0.0.1", PortName: "http", Port: 20002, Healthy: true},
	})
	waitFor(t, 10*time.Second, "b's own record", func() bool { return recordsOf(a, "b") > 0 })
	for _, r := range a.m.Records() {
		if r.Node == "b" && r.Addr != "127.0.0.2" {
			t.Errorf("a believes b's record for another host: %+v", r)
		}
	}
	// The same through a pull, without events.
	b.m.suppressEvents(true)
	b.m.SetLocalRecords([]shoal.Record{
		{Service: "web", Slot: 3, Addr: "127.0.0.2", PortName: "http", Port: 20003, Healthy: true},
		{Service: "web", Slot: 4, Addr: "10.66.0.1", PortName: "http", Port: 20004, Healthy: true},
	})
	waitFor(t, 10*time.Second, "b's pulled set", func() bool {
		return slices.ContainsFunc(a.m.Records(), func(r shoal.Record) bool { return r.Port == 20003 })
	})
	if slices.ContainsFunc(a.m.Records(), func(r shoal.Record) bool { return r.Port == 20004 }) {
		t.Error("a believes b's pulled record for another host")
	}
}

// TestRecordSetInAnotherNodesName: a record set that names another node
// is not believed on the word of an event, whose sender Serf does not
// say; the named node's own records still arrive.
func TestRecordSetInAnotherNodesName(t *testing.T) {
	a := startAgent(t, Config{NodeName: "a"})
	c := startAgent(t, Config{NodeName: "c", Join: []string{a.m.LocalAddr()}})
	waitFor(t, 10*time.Second, "joined", func() bool { return alive(a) == 2 && alive(c) == 2 })
	forged := encodeSet("c", []shoal.Record{{Service: "web", Slot: 0, Node: "c", Addr: "127.0.0.1", PortName: "http", Port: 29999, Healthy: true}})
	a.m.handle(serf.UserEvent{Name: "rec", Payload: forged}) // as if gossip brought it from anyone
	if got := a.m.Records(); len(got) != 0 {
		t.Fatalf("a believed a set in c's name that c did not vouch for: %v", got)
	}
	c.m.SetLocalRecords([]shoal.Record{{Service: "web", Slot: 1, Addr: "127.0.0.1", PortName: "http", Port: 20001, Healthy: true}})
	waitFor(t, 10*time.Second, "c's own set", func() bool {
		rs := a.m.Records()
		return len(rs) == 1 && rs[0].Port == 20001
	})
	a.m.handle(serf.UserEvent{Name: "rec", Payload: forged})
	if rs := a.m.Records(); len(rs) != 1 || rs[0].Port != 20001 {
		t.Fatalf("a forged set replaced c's: %v", rs)
	}
}

// syncBuffer is a log sink tests can read while a Mesh writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Contains(s.b.String(), sub)
}

// TestNameTakeoverRefused: a joiner under a live member's name does not
// take its place, and a member that finds its name taken is not shut
// down by a vote (Serf's name conflict resolution, which the majority of
// answers decides and anyone with the key can forge).
func TestNameTakeoverRefused(t *testing.T) {
	key := newKey(t)
	// The impostor came first: b knows "a" at the impostor's address.
	impostor := startAgent(t, Config{NodeName: "a", Key: key})
	b := startAgent(t, Config{NodeName: "b", Key: key, Join: []string{impostor.m.LocalAddr()}})
	waitFor(t, 10*time.Second, "b and the impostor", func() bool { return alive(b) == 2 })
	var logs syncBuffer
	real := startAgent(t, Config{NodeName: "a", Key: key, Join: []string{b.m.LocalAddr()}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	waitFor(t, 15*time.Second, "the real a tried to join", func() bool {
		return real.m.serf.State() == serf.SerfShutdown || logs.Contains("join failed")
	})
	if st := real.m.serf.State(); st != serf.SerfAlive {
		t.Fatalf("the real node was shut down by the name conflict: %v", st)
	}

	// The other way round: a live fleet, and an impostor joins it.
	x := startAgent(t, Config{NodeName: "x", Key: key})
	y := startAgent(t, Config{NodeName: "y", Key: key, Join: []string{x.m.LocalAddr()}})
	waitFor(t, 10*time.Second, "x and y", func() bool { return alive(x) == 2 && alive(y) == 2 })
	fake := startAgent(t, Config{NodeName: "x", Key: key})
	if n, err := fake.m.serf.Join([]string{y.m.LocalAddr()}, true); err == nil {
		t.Errorf("an impostor under x's name joined y (%d contacted)", n)
	}
	if st := x.m.serf.State(); st != serf.SerfAlive {
		t.Fatalf("x: %v", st)
	}
	for _, mb := range y.m.Members() {
		if mb.Node.Name == "x" && (mb.Addr != "127.0.0.1" || mb.Status != "alive") {
			t.Fatalf("y's x is now %+v", mb)
		}
	}
	if addr, _ := y.m.liveAddr("x"); addr != x.m.LocalAddr() {
		t.Fatalf("y knows x at %s, want %s", addr, x.m.LocalAddr())
	}
}
