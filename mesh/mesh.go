package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

// Config of one node's membership.
type Config struct {
	NodeName      string
	BindAddr      string
	BindPort      int
	AdvertiseAddr string
	AdvertisePort int
	// Join lists peers (host or host:port); joining is retried in the
	// background until one answers.
	Join []string
	// Key encrypts gossip (16, 24 or 32 bytes); a node without it cannot
	// join. Keys is a whole keyring instead, the primary first. Without
	// either, gossip is in clear, which New refuses beyond loopback unless
	// InsecureGossip says so.
	Key            []byte
	Keys           [][]byte
	InsecureGossip bool
	// KeyringFile keeps the keyring across restarts: read at start when it
	// exists (it then wins over Key and Keys), written when it does not,
	// and rewritten by Serf on every InstallKey, UseKey and RemoveKey.
	KeyringFile string
	// This node's facts, gossiped in its tags.
	CPU     float64
	Memory  shoal.Bytes
	Labels  map[string]string
	APIPort int
	// Failure detection. Defaults were measured on loopback (FINDINGS.md):
	// probe 200ms, timeout 100ms, suspicion ×2, gossip 50ms detect a hard
	// stop in about 0.7 s.
	ProbeInterval, ProbeTimeout, GossipInterval time.Duration
	SuspicionMult                               int
	// RestartGrace is how long peers keep the records and the place of a
	// node that stopped to restart (Pause) before treating it as failed.
	// Default 15s.
	RestartGrace time.Duration
	// ReconnectTimeout is how long a failed member is remembered by Serf
	// (default 24h), TombstoneTimeout one that left (default 1m), and
	// RejoinMaxInterval the rejoin loop's backoff ceiling (default 5s).
	// timers.go says why.
	ReconnectTimeout, TombstoneTimeout, RejoinMaxInterval time.Duration
	// PeersFile keeps the members this node has known across restarts,
	// so a site whose every agent restarts with its seeds gone re-forms.
	// Empty: kept in memory only.
	PeersFile string
	Logger    *slog.Logger
	// OnAnnounce receives each commit hash a peer announces, once.
	OnAnnounce func(commit string)
}

// Member is a node of the fleet as gossip knows it.
type Member struct {
	Node     shoal.Node
	Addr     string
	Status   string // alive, leaving, left, failed
	Revision string
	APIPort  int
}

// Mesh is one node's membership, tags and record table.
type Mesh struct {
	cfg     Config
	log     *slog.Logger
	serf    *serf.Serf
	events  chan serf.Event
	changes chan struct{}
	gen     atomic.Uint64 // bumped by notify
	pullNow chan struct{}

	mu       sync.Mutex
	tags     map[string]string
	local    []shoal.Record
	localEnc []byte
	digest   string
	peers    map[string]peerRecords // node → its records
	// gone keeps the last records of members seen failed or departed, out
	// of Records: one that comes back advertising the same digest (a
	// false failure detection, under load) gets them back without a pull,
	// so suspicion under load does not feed itself with fleet-wide
	// queries. Dropped when Serf reaps the member.
	gone  map[string]peerRecords
	pulls atomic.Int64 // record sets pulled, for tests and debugging
	// pullSoon: nodes whose digest-only event announced a set not held.
	pullSoon    map[string]string
	announced   map[string]bool
	annOrder    []string                        // announced, oldest first, to keep it bounded
	loads       map[string]map[string]loadEntry // node → service → traffic report
	suppress    bool                            // tests: do not broadcast record events
	frozen      bool                            // tests: leave the digest in the tags as it is
	paused      map[string]time.Time            // failed members that said they restart → when
	restartSaid map[string]time.Time            // alive members that announced a restart → when

	// pending holds, per node, the last record set that came by event and
	// whose digest its sender's tags did not show yet: a user event does
	// not say who sent it, the tags do (see acceptEvent).
	pending map[string]peerRecords

	// live is the gossip address of each member last seen alive, for
	// mergeGuard; self is this node's.
	liveMu sync.Mutex
	live   map[string]string
	self   string

	joined atomic.Bool
	known  *known // members ever known, for the rejoin loop (rejoin.go)

	closeOnce sync.Once
	closed    chan struct{}
}

// Joined reports whether this node has joined its peers, or has none to
// join. A plan made before that would see a fleet of one.
func (m *Mesh) Joined() bool { return m.joined.Load() }

type peerRecords struct {
	digest  string
	records []shoal.Record
}

// New validates the config and creates the Serf agent (bound, not joined).
func New(cfg Config) (*Mesh, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("mesh: node name is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	setDefault(&cfg.ProbeInterval, DefaultProbeInterval)
	setDefault(&cfg.ProbeTimeout, DefaultProbeTimeout)
	setDefault(&cfg.GossipInterval, DefaultGossipInterval)
	setDefault(&cfg.SuspicionMult, DefaultSuspicionMult)
	setDefault(&cfg.RestartGrace, DefaultRestartGrace)
	setDefault(&cfg.ReconnectTimeout, DefaultReconnectTimeout)
	setDefault(&cfg.TombstoneTimeout, DefaultTombstoneTimeout)
	setDefault(&cfg.RejoinMaxInterval, DefaultRejoinMaxInterval)
	cfg.RejoinMaxInterval = max(cfg.RejoinMaxInterval, RejoinMinInterval)
	kn, err := loadKnown(cfg.PeersFile)
	if err != nil {
		// Damaged: start from the seeds alone, and rewrite it.
		cfg.Logger.Warn("known peers unreadable; starting from --join alone", "err", err)
	}
	m := &Mesh{
		cfg: cfg, log: cfg.Logger,
		events: make(chan serf.Event, 1024), changes: make(chan struct{}, 1), pullNow: make(chan struct{}, 1),
		peers: map[string]peerRecords{}, gone: map[string]peerRecords{}, pullSoon: map[string]string{}, announced: map[string]bool{}, loads: map[string]map[string]loadEntry{}, pending: map[string]peerRecords{}, live: map[string]string{}, paused: map[string]time.Time{}, restartSaid: map[string]time.Time{}, closed: make(chan struct{}),
		known: kn,
	}
	// No digest until the first SetLocalRecords: an agent that restarts
	// has not yet looked at the containers it kept, and an empty set
	// advertised meanwhile would take their records off every peer.
	m.tags = encodeTags(nodeTags{CPU: cfg.CPU, Memory: cfg.Memory, Labels: cfg.Labels, APIPort: cfg.APIPort})
	// The limit is checked on the tags as they will be, with a digest and
	// a commit.
	full := encodeTags(nodeTags{CPU: cfg.CPU, Memory: cfg.Memory, Labels: cfg.Labels, APIPort: cfg.APIPort, Digest: emptyDigest, Revision: strings.Repeat("0", 40)})
	if n := tagsSize(full); n > maxTagBytes {
		return nil, fmt.Errorf("mesh: node tags take %d bytes, over Serf's %d-byte limit: use fewer or shorter labels", n, maxTagBytes)
	}

	keys, err := loadKeyring(cfg)
	if err != nil {
		return nil, err
	}
	bindHost := cfg.BindAddr
	if bindHost == "" {
		bindHost = "0.0.0.0"
	}
	if len(keys) == 0 && !cfg.InsecureGossip && !IsLoopbackHost(bindHost) {
		return nil, fmt.Errorf("%w: bind %s", ErrPlaintextGossip, bindHost)
	}

	sc := serf.DefaultConfig()
	sc.NodeName = cfg.NodeName
	// A joiner that takes a live member's name is refused (mergeGuard),
	// and never votes the real member out: Serf's resolution shuts down
	// whichever side the majority of answers, which anyone holding the
	// key can forge, does not know.
	sc.EnableNameConflictResolution = false
	sc.Merge = mergeGuard{m}
	sc.KeyringFile = cfg.KeyringFile
	sc.Tags = m.tags
	sc.EventCh = m.events
	// Failed members are contacted again by Serf's reconnect loop for
	// ReconnectTimeout, and by the rejoin loop after that.
	sc.ReconnectTimeout = cfg.ReconnectTimeout
	sc.ReconnectInterval = DefaultReconnectInterval
	sc.TombstoneTimeout = cfg.TombstoneTimeout
	sc.QueryTimeoutMult = 4
	logw := &slogWriter{log: m.log}
	sc.LogOutput = logw
	ml := memberlist.DefaultLANConfig()
	ml.Name = cfg.NodeName
	ml.BindAddr, ml.BindPort = cfg.BindAddr, cfg.BindPort
	if ml.BindAddr == "" {
		ml.BindAddr = "0.0.0.0"
	}
	ml.AdvertiseAddr, ml.AdvertisePort = cfg.AdvertiseAddr, cfg.AdvertisePort
	if ml.AdvertisePort == 0 {
		ml.AdvertisePort = cfg.BindPort
	}
	ml.ProbeInterval, ml.ProbeTimeout, ml.GossipInterval = cfg.ProbeInterval, cfg.ProbeTimeout, cfg.GossipInterval
	ml.SuspicionMult = cfg.SuspicionMult
	// A member that missed the gossip of others' joins (it joined a peer
	// that had not yet joined the rest) learns of them only by a full
	// state exchange: every 30 s by default (49 s measured once on
	// loopback), all that time planning on part of the fleet.
	ml.PushPullInterval = PushPullInterval
	// A failed member's name may come back from a new address (DHCP).
	ml.DeadNodeReclaimTime = DeadNodeReclaimTime
	if len(keys) > 0 {
		kr, err := memberlist.NewKeyring(keys, keys[0])
		if err != nil {
			return nil, fmt.Errorf("mesh: gossip keyring: %w", err)
		}
		ml.Keyring = kr
	}
	ml.LogOutput = logw
	sc.MemberlistConfig = ml
	s, err := serf.Create(sc)
	if err != nil {
		return nil, fmt.Errorf("mesh: start gossip on %s:%d: %w", ml.BindAddr, cfg.BindPort, err)
	}
	m.serf = s
	self := s.LocalMember()
	m.liveMu.Lock()
	m.self = net.JoinHostPort(self.Addr.String(), strconv.Itoa(int(self.Port)))
	m.liveMu.Unlock()
	if err := m.known.save(m.self); err != nil {
		m.log.Warn("known peers not saved", "err", err)
	}
	return m, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// slogWriter turns Serf's and memberlist's log lines into debug records.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERR]"), strings.Contains(line, "[WARN]"):
		// Suspicions and failed probes: what explains a false failure.
		w.log.Warn(line)
	default:
		w.log.Debug(line)
	}
	return len(p), nil
}

// LocalAddr is the gossip address this node listens on.
func (m *Mesh) LocalAddr() string {
	mb := m.serf.LocalMember()
	return net.JoinHostPort(mb.Addr.String(), strconv.Itoa(int(mb.Port)))
}

// Run handles gossip events, retries joins and pulls records until ctx
// ends; then it leaves the fleet.
func (m *Mesh) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); m.rejoinLoop(ctx) }()
	go func() { defer wg.Done(); m.antiEntropy(ctx) }()
	for {
		select {
		case <-ctx.Done():
			return nil // the owner chooses Close (leave) or Pause (restart)
		case <-m.closed:
			return nil
		case ev := <-m.events:
			m.handle(ev)
		}
		m.expireGrace()
	}
}

func (m *Mesh) handle(ev serf.Event) {
	switch e := ev.(type) {
	case serf.MemberEvent:
		for _, mb := range e.Members {
			if e.Type != serf.EventMemberUpdate {
				lvl := slog.LevelInfo
				if e.Type == serf.EventMemberFailed {
					lvl = slog.LevelWarn
				}
				m.log.Log(context.Background(), lvl, "membership", "event", e.Type.String(), "member", mb.Name, "addr", mb.Addr.String())
			}
			m.noteMember(e.Type, mb)
			m.noteKnown(e.Type, mb)
			m.mu.Lock()
			switch {
			case e.Type == serf.EventMemberFailed && (mb.Tags["p"] == "1" || m.saidRestart(mb.Name)):
				// It said it is restarting with its containers kept: keep
				// its records and its place for the grace period.
				m.paused[mb.Name] = time.Now()
			case e.Type == serf.EventMemberReap:
				delete(m.peers, mb.Name)
				delete(m.paused, mb.Name)
				delete(m.restartSaid, mb.Name)
				delete(m.gone, mb.Name)
				delete(m.pullSoon, mb.Name)
				delete(m.pending, mb.Name)
			case e.Type == serf.EventMemberFailed, e.Type == serf.EventMemberLeave:
				// A failed or departed member's records go at once.
				m.forget(mb.Name)
				delete(m.paused, mb.Name)
			case e.Type == serf.EventMemberJoin:
				delete(m.paused, mb.Name)
				delete(m.restartSaid, mb.Name)
			}
			m.mu.Unlock()
		}
		m.kickPull()
		m.notify()
	case serf.UserEvent:
		m.handleUserEvent(e)
	case *serf.Query:
		m.handleQuery(e)
	}
}

func (m *Mesh) notify() {
	m.gen.Add(1)
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

func (m *Mesh) kickPull() {
	select {
	case m.pullNow <- struct{}{}:
	default:
	}
}

// Generation counts changes to members and records: a cache of anything
// derived from Records is good while it stays the same.
func (m *Mesh) Generation() uint64 { return m.gen.Load() }

// Changes signals, coalesced, that members or records changed.
func (m *Mesh) Changes() <-chan struct{} { return m.changes }

// Members returns every known member, sorted by name.
func (m *Mesh) Members() []Member {
	var out []Member
	for _, mb := range m.serf.Members() {
		t := decodeTags(mb.Tags)
		status := mb.Status.String()
		if mb.Status == serf.StatusFailed && m.inGrace(mb.Name) {
			status = "restarting" // counted as alive: its containers still run
		}
		out = append(out, Member{
			Node:     shoal.Node{Name: mb.Name, CPU: t.CPU, Memory: t.Memory, Labels: t.Labels},
			Addr:     mb.Addr.String(),
			Status:   status,
			Revision: t.Revision,
			APIPort:  t.APIPort,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node.Name < out[j].Node.Name })
	return out
}

// Nodes returns the alive members as placement input, sorted by name.
func (m *Mesh) Nodes() []shoal.Node {
	var out []shoal.Node
	for _, mb := range m.Members() {
		if mb.Status == "alive" || mb.Status == "restarting" {
			out = append(out, mb.Node)
		}
	}
	return out
}

// inGrace reports whether a failed member is a restart still within the
// grace period.
func (m *Mesh) inGrace(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	since, ok := m.paused[name]
	return ok && time.Since(since) < m.cfg.RestartGrace
}

// forget takes a member's records out of the fleet's, keeping them in
// gone. m.mu is held.
func (m *Mesh) forget(name string) {
	if pr, ok := m.peers[name]; ok {
		m.gone[name] = pr
		delete(m.peers, name)
	}
	delete(m.pending, name)
}

// expireGrace drops members whose restart took longer than the grace.
func (m *Mesh) expireGrace() {
	m.mu.Lock()
	var expired bool
	for name, since := range m.paused {
		if time.Since(since) >= m.cfg.RestartGrace {
			delete(m.paused, name)
			m.forget(name)
			expired = true
		}
	}
	m.mu.Unlock()
	if expired {
		m.notify()
	}
}

// Pause stops gossip for a restart that keeps this node's containers:
// peers are told first, then the agent goes quiet without leaving, so
// they keep its records and its slots for RestartGrace instead of moving
// them. A crash gives no such notice: its slots move at once.
func (m *Mesh) Pause() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		m.announceRestart()
		err = m.serf.Shutdown()
	})
	return err
}

// pauseTimeout bounds how long Pause waits for its peers' word.
const pauseTimeout = 2 * time.Second

// announceRestart tells every alive peer that this node restarts, and
// waits until each has said it heard, or pauseTimeout: a tag alone
// spreads by gossip, with no way to know it arrived before the process
// is gone. The tag stays, for a member that misses the query.
func (m *Mesh) announceRestart() {
	m.mu.Lock()
	t := decodeTags(m.tags)
	m.mu.Unlock()
	tags := encodeTags(t)
	tags["p"] = "1"
	if err := m.serf.SetTags(tags); err != nil {
		m.log.Warn("restart tag", "err", err)
	}
	want := map[string]bool{}
	for _, mb := range m.serf.Members() {
		if mb.Status == serf.StatusAlive && mb.Name != m.cfg.NodeName {
			want[mb.Name] = true
		}
	}
	if len(want) == 0 {
		return
	}
	resp, err := m.serf.Query(restartQuery, nil, &serf.QueryParam{Timeout: pauseTimeout})
	if err != nil {
		m.log.Warn("announce restart", "err", err)
		return
	}
	defer resp.Close()
	for r := range resp.ResponseCh() { // closed at the deadline
		delete(want, r.From)
		if len(want) == 0 {
			return
		}
	}
	m.log.Warn("restart announced; not every peer confirmed, they will move this node's slots", "unconfirmed", slices.Sorted(maps.Keys(want)))
}

// restartQuery is the Serf query a pausing node sends; a peer answers
// once it will keep the sender's records through its failure.
const restartQuery = "restart"

// saidRestart reports whether name announced a restart within the grace
// period. m.mu is held.
func (m *Mesh) saidRestart(name string) bool {
	at, ok := m.restartSaid[name]
	return ok && time.Since(at) < m.cfg.RestartGrace
}

// SetRevision puts the Git commit this node runs in its tags.
func (m *Mesh) SetRevision(commit string) {
	m.updateTags(func(t *nodeTags) bool {
		if t.Revision == commit {
			return false
		}
		t.Revision = commit
		return true
	})
}

func (m *Mesh) updateTags(f func(*nodeTags) bool) {
	m.mu.Lock()
	t := decodeTags(m.tags)
	if !f(&t) {
		m.mu.Unlock()
		return
	}
	m.tags = encodeTags(t)
	tags := m.tags
	m.mu.Unlock()
	if err := m.serf.SetTags(tags); err != nil {
		m.log.Warn("update tags", "err", err)
	}
}

// maxAnnounced bounds the commits remembered as announced: a commit is
// announced once, and Serf itself drops repeats it still buffers, so
// only recent ones matter.
const maxAnnounced = 1024

// markAnnounced records a commit as announced and says whether it was.
func (m *Mesh) markAnnounced(commit string) (seen bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.announced[commit] {
		return true
	}
	m.announced[commit] = true
	m.annOrder = append(m.annOrder, commit)
	if len(m.annOrder) > maxAnnounced {
		delete(m.announced, m.annOrder[0])
		m.annOrder = slices.Delete(m.annOrder, 0, 1)
	}
	return false
}

// Announce tells the fleet about a commit.
func (m *Mesh) Announce(commit string) error {
	m.markAnnounced(commit)
	if err := m.serf.UserEvent("ann", []byte(commit), false); err != nil {
		return fmt.Errorf("announce %s: %w", commit, err)
	}
	return nil
}

// Close leaves the fleet gracefully and stops gossip. Safe to call twice.
func (m *Mesh) Close() error {
	var err error
	m.closeOnce.Do(func() {
		close(m.closed)
		if lerr := m.serf.Leave(); lerr != nil {
			m.log.Warn("leave", "err", lerr)
		}
		err = m.serf.Shutdown()
	})
	return err
}

// Kill stops gossip without leaving, as a crash would (for tests).
func (m *Mesh) Kill() {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.serf.Shutdown()
	})
}

var _ io.Writer = (*slogWriter)(nil)
