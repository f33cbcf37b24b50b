package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/serf/serf"
)

// A partition of any length heals by itself: every node remembers the
// members it has known (name and last gossip address), on disk when
// Config.PeersFile is set, and a background loop tries the --join seeds
// and each known member that is not alive, whenever there is one, with
// doubling delays and jitter. Serf's own reconnect loop does the same for
// failed members it still remembers (ReconnectTimeout); this loop also
// covers the members Serf has reaped and a whole site restarting at once
// with its seeds gone.

// knownPeer is a member this node has known.
type knownPeer struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // gossip host:port
	// Left: it said goodbye. Not chased while gossip knows it as left,
	// and forgotten when Serf reaps it; tried again after a restart,
	// though, so a site stopped gracefully re-forms.
	Left bool `json:"left,omitempty"`
}

// peersFile is what Config.PeersFile holds.
type peersFile struct {
	// Self is this node's gossip address when the file was written: a
	// peer that still remembers this node at it, after a renumbering,
	// names the same node, not an impostor (see mergeGuard).
	Self  string      `json:"self,omitempty"`
	Peers []knownPeer `json:"peers"`
}

// maxKnownPeers bounds the remembered members (and the file).
const maxKnownPeers = 4096

// known is the remembered members, guarded by its own lock: handle
// updates it, the rejoin loop reads it.
type known struct {
	mu       sync.Mutex
	peers    map[string]knownPeer
	prevSelf string // this node's address as the file last said
	path     string
}

// loadKnown reads the peers file; a missing file is an empty memory, a
// damaged one too (with the error, for the log).
func loadKnown(path string) (*known, error) {
	k := &known{peers: map[string]knownPeer{}, path: path}
	if path == "" {
		return k, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return k, nil
	}
	if err != nil {
		return k, fmt.Errorf("mesh: peers file %s: %w", path, err)
	}
	var f peersFile
	if err := json.Unmarshal(data, &f); err != nil {
		return k, fmt.Errorf("mesh: peers file %s: %w", path, err)
	}
	k.prevSelf = f.Self
	for _, p := range f.Peers {
		if p.Name != "" && p.Addr != "" && len(k.peers) < maxKnownPeers {
			k.peers[p.Name] = p
		}
	}
	return k, nil
}

// note applies a membership event to the memory and says whether it
// changed. A member's address is always the last one gossip gave, so a
// renumbered member's old address is forgotten.
func (k *known) note(t serf.EventType, name, addr string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	old, had := k.peers[name]
	switch t {
	case serf.EventMemberJoin, serf.EventMemberUpdate, serf.EventMemberFailed:
		if !had && len(k.peers) >= maxKnownPeers {
			return false
		}
		k.peers[name] = knownPeer{Name: name, Addr: addr}
	case serf.EventMemberLeave:
		k.peers[name] = knownPeer{Name: name, Addr: addr, Left: true}
	case serf.EventMemberReap:
		// A failed member Serf gave up on is still tried: it may be
		// behind a link that is down for days.
		if had && old.Left {
			delete(k.peers, name)
		}
	default:
		return false
	}
	return k.peers[name] != old
}

// list returns the remembered members sorted by name.
func (k *known) list() []knownPeer {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]knownPeer, 0, len(k.peers))
	for _, p := range k.peers {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b knownPeer) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// save writes the memory through a temporary file, so a crash leaves the
// old file or the new one.
func (k *known) save(self string) error {
	if k.path == "" {
		return nil
	}
	data, _ := json.MarshalIndent(peersFile{Self: self, Peers: k.list()}, "", "  ")
	if err := os.MkdirAll(filepath.Dir(k.path), 0o700); err != nil {
		return fmt.Errorf("mesh: peers file: %w", err)
	}
	tmp := k.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("mesh: peers file: %w", err)
	}
	if err := os.Rename(tmp, k.path); err != nil {
		return fmt.Errorf("mesh: peers file: %w", err)
	}
	return nil
}

// memberView is what the rejoin plan needs of a gossip member.
type memberView struct {
	Name, Addr string // Addr: host:port
	Status     serf.MemberStatus
}

// rejoinTargets works out whom the rejoin loop tries: nobody while every
// member this node has known is alive (or left on purpose, as gossip
// knows it); else every such member that is not alive, at its last
// address, and every seed that is not a live member's address. A node
// that knows nobody yet tries its seeds. Pure: sorted output, no I/O.
func rejoinTargets(self string, selfAddr string, seeds []string, known []knownPeer, members []memberView) (targets []string, missing []string) {
	aliveAddr := map[string]bool{selfAddr: true}
	status := map[string]serf.MemberStatus{}
	others := 0
	for _, mb := range members {
		status[mb.Name] = mb.Status
		if mb.Status == serf.StatusAlive {
			aliveAddr[mb.Addr] = true
			if mb.Name != self {
				others++
			}
		}
	}
	add := map[string]bool{}
	for _, p := range known {
		if p.Name == self {
			continue
		}
		st, inGossip := status[p.Name]
		switch {
		case st == serf.StatusAlive:
			continue
		case inGossip && (st == serf.StatusLeft || st == serf.StatusLeaving):
			continue // it left on purpose, and gossip still says so
		}
		missing = append(missing, p.Name)
		if !aliveAddr[p.Addr] {
			add[p.Addr] = true
		}
	}
	// Members gossip reports failed but this node never noted (an
	// event not handled yet) are missing too.
	for _, mb := range members {
		if mb.Name != self && mb.Status == serf.StatusFailed && !slices.Contains(missing, mb.Name) {
			missing = append(missing, mb.Name)
			if !aliveAddr[mb.Addr] {
				add[mb.Addr] = true
			}
		}
	}
	if len(missing) == 0 && others > 0 {
		return nil, nil
	}
	for _, s := range seeds {
		if !aliveAddr[s] {
			add[s] = true
		}
	}
	if len(missing) == 0 && len(add) == 0 {
		return nil, nil
	}
	for a := range add {
		targets = append(targets, a)
	}
	slices.Sort(targets)
	slices.Sort(missing)
	return targets, missing
}

// seedAddrs is the --join list as host:port, the gossip port added where
// missing, without this node's own address.
func (m *Mesh) seedAddrs() []string {
	port := m.cfg.AdvertisePort
	if port == 0 {
		port = m.cfg.BindPort
	}
	self := m.LocalAddr()
	var out []string
	for _, j := range m.cfg.Join {
		if _, _, err := net.SplitHostPort(j); err != nil && port != 0 {
			j = net.JoinHostPort(j, strconv.Itoa(port))
		}
		if j != self {
			out = append(out, j)
		}
	}
	return out
}

// rejoinPlan gathers the rejoin loop's input and asks rejoinTargets.
func (m *Mesh) rejoinPlan() (targets, missing []string, alive int) {
	var views []memberView
	for _, mb := range m.serf.Members() {
		views = append(views, memberView{Name: mb.Name, Addr: net.JoinHostPort(mb.Addr.String(), strconv.Itoa(int(mb.Port))), Status: mb.Status})
		if mb.Status == serf.StatusAlive {
			alive++
		}
	}
	targets, missing = rejoinTargets(m.cfg.NodeName, m.LocalAddr(), m.seedAddrs(), m.known.list(), views)
	return targets, missing, alive
}

// rejoinLoop keeps this node joined to everyone it has known, until ctx
// ends. It replaces a one-shot join: the first success sets Joined, and
// the loop goes on watching.
func (m *Mesh) rejoinLoop(ctx context.Context) {
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(len(m.cfg.NodeName))))
	attempt, lastAlive := 0, 0
	for {
		targets, missing, alive := m.rejoinPlan()
		delay := RejoinMinInterval
		if alive > 1 {
			m.joined.Store(true) // a peer joined this node, or it joined one
		}
		switch {
		case len(targets) == 0:
			// Nothing to reach (all known alive, or the first node of
			// a fleet): the plan may go ahead.
			m.joined.Store(true)
			attempt = 0
		default:
			if alive < lastAlive {
				attempt = 0 // a new loss: start again from short delays
			}
			n := m.tryJoin(ctx, targets)
			switch {
			case n > 0 && !m.joined.Load():
				m.log.Info("joined fleet", "contacted", n, "tried", len(targets), "missing", missing)
				m.joined.Store(true)
			case n > 0:
				// Membership events say who came back; a seed known by
				// name only answers every round.
				m.log.Debug("rejoin", "contacted", n, "tried", len(targets), "missing", missing)
			case !m.joined.Load():
				m.log.Warn("join failed, retrying", "peers", targets, "missing", missing)
			default:
				m.log.Debug("rejoin: no known member answered", "tried", targets, "missing", missing)
			}
			delay = rejoinDelay(attempt, RejoinMinInterval, m.cfg.RejoinMaxInterval, rnd.Float64())
			attempt++
		}
		lastAlive = alive
		select {
		case <-ctx.Done():
			return
		case <-m.closed:
			return
		case <-time.After(delay):
		}
	}
}

// dialTimeout bounds the reachability check of a rejoin target.
const dialTimeout = 2 * time.Second

// tryJoin contacts every target at once and joins those that answer; it
// says how many did. A TCP connection is tried first, under ctx: a target
// behind a cut link would otherwise hold memberlist's join for its whole
// TCP timeout, and a stop with it. (Memberlist reads an empty stream as
// nothing at all.)
func (m *Mesh) tryJoin(parent context.Context, targets []string) int {
	ctx, cancel := context.WithTimeout(parent, dialTimeout)
	defer cancel()
	up := make([]bool, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", t)
			if err == nil {
				c.Close()
				up[i] = true
			}
		}()
	}
	wg.Wait()
	var reach []string
	for i, t := range targets {
		if up[i] {
			reach = append(reach, t)
		}
	}
	if len(reach) == 0 || parent.Err() != nil {
		return 0
	}
	n, err := m.serf.Memberlist().Join(reach)
	if err != nil && n == 0 {
		m.log.Debug("rejoin", "targets", reach, "err", err)
	}
	return n
}

// noteKnown keeps the memory of members, and its file, up to date.
func (m *Mesh) noteKnown(t serf.EventType, mb serf.Member) {
	if mb.Name == m.cfg.NodeName {
		return
	}
	if m.known.note(t, mb.Name, net.JoinHostPort(mb.Addr.String(), strconv.Itoa(int(mb.Port)))) {
		if err := m.known.save(m.selfAddr()); err != nil {
			m.log.Warn("known peers not saved", "err", err)
		}
	}
}

// formerSelf reports whether addr is where this node was before it was
// renumbered: peers may remember it there for a while.
func (m *Mesh) formerSelf(addr string) bool {
	return m.known.prevSelf != "" && addr == m.known.prevSelf
}
