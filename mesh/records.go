package mesh

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

// Limits that keep gossip payloads within what Serf carries.
const (
	maxTagBytes   = 512 // all tags of a node, encoded
	maxEventBytes = 480 // user event payload (Serf's default limit is 512 with the name)
	chunkBytes    = 900 // one query response (Serf's default limit is 1024)
)

// nodeTags is what a node says about itself in its Serf tags.
type nodeTags struct {
	CPU      float64
	Memory   shoal.Bytes
	Labels   map[string]string
	APIPort  int
	Revision string
	Digest   string // of this node's records
}

func encodeTags(t nodeTags) map[string]string {
	m := map[string]string{
		"c": strconv.FormatInt(int64(t.CPU*1000+0.5), 10), // millicores
		"m": strconv.FormatInt(int64(t.Memory>>20), 10),   // MiB
		"d": t.Digest,
	}
	if t.APIPort > 0 {
		m["a"] = strconv.Itoa(t.APIPort)
	}
	if t.Revision != "" {
		m["r"] = t.Revision
	}
	if len(t.Labels) > 0 {
		keys := make([]string, 0, len(t.Labels))
		for k := range t.Labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + t.Labels[k]
		}
		m["l"] = strings.Join(parts, ",")
	}
	return m
}

// decodeTags reads tags; unknown or malformed values read as zero, since
// tags come from the network.
func decodeTags(m map[string]string) nodeTags {
	var t nodeTags
	if v, err := strconv.ParseInt(m["c"], 10, 64); err == nil && v >= 0 {
		t.CPU = float64(v) / 1000
	}
	if v, err := strconv.ParseInt(m["m"], 10, 64); err == nil && v >= 0 && v < 1<<40 {
		t.Memory = shoal.Bytes(v) << 20
	}
	if v, err := strconv.Atoi(m["a"]); err == nil && v > 0 && v < 65536 {
		t.APIPort = v
	}
	t.Revision, t.Digest = m["r"], m["d"]
	if l := m["l"]; l != "" {
		t.Labels = map[string]string{}
		for _, kv := range strings.Split(l, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				t.Labels[k] = v
			}
		}
	}
	return t
}

// tagsSize is the encoded size Serf counts against its limit (close to it:
// msgpack adds a few bytes per entry).
func tagsSize(m map[string]string) int {
	n := 1
	for k, v := range m {
		n += len(k) + len(v) + 4
	}
	return n
}

// wireRecord is a record as gossiped: the node and address come from the
// sender, so they are not repeated.
type wireRecord struct {
	S string `json:"s"`
	I int    `json:"i"`
	A string `json:"a"`
	N string `json:"n"`
	P int    `json:"p"`
	R string `json:"r,omitempty"`
	X string `json:"x,omitempty"` // spec hash prefix
	H bool   `json:"h,omitempty"`
}

// recordSet is one node's records on the wire.
type recordSet struct {
	Node    string       `json:"node"`
	Digest  string       `json:"d"`
	Records []wireRecord `json:"r"`
}

func encodeSet(node string, rs []shoal.Record) []byte {
	set := recordSet{Node: node, Digest: digestOf(rs), Records: []wireRecord{}}
	for _, r := range rs {
		rev := r.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		set.Records = append(set.Records, wireRecord{S: r.Service, I: r.Slot, A: r.Addr, N: r.PortName, P: r.Port, R: rev, X: shoal.ShortSpec(r.Spec), H: r.Healthy})
	}
	b, _ := json.Marshal(set)
	return b
}

// decodeSet reads a record set from a peer. Every record is attributed to
// the set's node; malformed sets are rejected whole.
func decodeSet(b []byte) (recordSet, []shoal.Record, error) {
	var set recordSet
	if err := json.Unmarshal(b, &set); err != nil {
		return set, nil, fmt.Errorf("decode records: %w", err)
	}
	if set.Node == "" || len(set.Records) > 100000 {
		return set, nil, errors.New("decode records: bad set")
	}
	rs := make([]shoal.Record, 0, len(set.Records))
	for _, w := range set.Records {
		// Port 0: a record of something that listens nowhere (a job run).
		if w.S == "" || w.P < 0 || w.P > 65535 || w.I < 0 {
			return set, nil, errors.New("decode records: bad record")
		}
		rs = append(rs, shoal.Record{Service: w.S, Slot: w.I, Node: set.Node, Addr: w.A, PortName: w.N, Port: w.P, Revision: w.R, Spec: shoal.ShortSpec(w.X), Healthy: w.H})
	}
	shoal.SortRecords(rs)
	return set, rs, nil
}

// emptyDigest is the digest of no records.
var emptyDigest = digestOf(nil)

// digestOf is a short, stable digest of a node's records.
func digestOf(rs []shoal.Record) string {
	cp := append([]shoal.Record(nil), rs...)
	shoal.SortRecords(cp)
	for i := range cp {
		cp[i].Local = "" // not gossiped: the digest must match what peers decode
		if len(cp[i].Revision) > 12 {
			cp[i].Revision = cp[i].Revision[:12]
		}
	}
	b, _ := json.Marshal(cp)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// SetLocalRecords publishes this node's records: when small, the set
// itself travels in a user event, and then their digest goes in the tags
// (so peers that missed the event notice and pull). Event first: setting
// tags blocks while memberlist retransmits them, and a peer that saw the
// new digest before the set would pull it — a query broadcast to the
// whole fleet — for nothing.
func (m *Mesh) SetLocalRecords(rs []shoal.Record) {
	cp := append([]shoal.Record(nil), rs...)
	for i := range cp {
		cp[i].Node = m.cfg.NodeName
	}
	d := digestOf(cp)
	m.mu.Lock()
	if d == m.digest {
		// Only what is never gossiped (Local) may differ: keep it here.
		changed := !slices.Equal(cp, m.local)
		m.local = cp
		m.mu.Unlock()
		if changed {
			m.notify()
		}
		return
	}
	m.local, m.digest = cp, d
	m.localEnc = encodeSet(m.cfg.NodeName, cp)
	enc, suppress, frozen := m.localEnc, m.suppress, m.frozen
	m.mu.Unlock()
	m.notify()
	if !suppress {
		payload := enc
		if len(payload) > maxEventBytes {
			payload, _ = json.Marshal(recordSet{Node: m.cfg.NodeName, Digest: d}) // peers pull the set
		}
		if err := m.serf.UserEvent("rec", payload, false); err != nil {
			m.log.Warn("record event", "err", err)
		}
	}
	if !frozen {
		m.updateTags(func(t *nodeTags) bool { t.Digest = d; return true })
	}
}

// Records returns the fleet's records — this node's and every alive
// peer's — sorted.
func (m *Mesh) Records() []shoal.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := append([]shoal.Record(nil), m.local...)
	for _, p := range m.peers {
		out = append(out, p.records...)
	}
	shoal.SortRecords(out)
	return out
}

func (m *Mesh) handleUserEvent(e serf.UserEvent) {
	switch e.Name {
	case "ann":
		commit := string(e.Payload)
		if !validCommit(commit) {
			return
		}
		if !m.markAnnounced(commit) && m.cfg.OnAnnounce != nil {
			m.cfg.OnAnnounce(commit)
		}
	case "rec":
		set, rs, err := decodeSet(e.Payload)
		if err != nil || set.Node == m.cfg.NodeName {
			return
		}
		if !m.alive(set.Node) {
			return
		}
		if set.Digest == digestOf(rs) {
			m.acceptEvent(set.Node, set.Digest, rs)
			return
		}
		// The event only carried a digest (the set is too big): it
		// says the set changed, so pull without waiting for the tags.
		m.mu.Lock()
		m.pullSoon[set.Node] = set.Digest
		m.mu.Unlock()
		m.kickPull()
	case "load":
		m.handleLoad(e)
	}
}

func validCommit(s string) bool {
	if len(s) < 7 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func (m *Mesh) alive(node string) bool {
	for _, mb := range m.serf.Members() {
		if mb.Name == node {
			return mb.Status == serf.StatusAlive
		}
	}
	return false
}

// acceptEvent takes a record set that came by user event. Serf does not
// say who sent an event, and any member could name another node in it;
// the digest in a member's tags, though, only that member sets (and
// refutes when another claims it). So the set is believed once the
// sender's tags show its digest: at once when they already do, else it
// waits in pending until they catch up (antiEntropy), or is replaced.
func (m *Mesh) acceptEvent(node, digest string, rs []shoal.Record) {
	if want, _ := m.advertised(node); want == digest {
		m.store(node, digest, rs)
		return
	}
	m.mu.Lock()
	m.pending[node] = peerRecords{digest: digest, records: rs}
	m.mu.Unlock()
}

// ownOnly keeps a node's records whose address is the node's own.
func (m *Mesh) ownOnly(node string, rs []shoal.Record) []shoal.Record {
	addr, _ := m.memberAddr(node)
	kept, dropped := ownRecords(rs, addr)
	if dropped > 0 {
		m.log.Warn("records dropped: their address is not their node's", "node", node, "node_addr", addr, "dropped", dropped)
	}
	return kept
}

// store holds rs as node's records, only those at node's own address.
func (m *Mesh) store(node, digest string, rs []shoal.Record) {
	rs = m.ownOnly(node, rs)
	m.mu.Lock()
	changed := m.setLocked(node, digest, rs)
	m.mu.Unlock()
	if changed {
		m.notify()
	}
}

// setLocked holds rs as node's records and says whether they changed.
// m.mu is held.
func (m *Mesh) setLocked(node, digest string, rs []shoal.Record) bool {
	old, had := m.peers[node]
	m.peers[node] = peerRecords{digest: digest, records: rs}
	delete(m.gone, node)
	return !had || old.digest != digest
}

// handleQuery notes restart announcements and answers "recs" pulls: payload is the chunk index; the answer
// is 4 bytes of chunk count then the chunk.
func (m *Mesh) handleQuery(q *serf.Query) {
	if q.Name == restartQuery {
		if src := q.SourceNode(); src != m.cfg.NodeName {
			m.mu.Lock()
			m.restartSaid[src] = time.Now()
			m.mu.Unlock()
			if err := q.Respond(nil); err != nil {
				m.log.Debug("answer restart announcement", "from", src, "err", err)
			}
		}
		return
	}
	if q.Name != "recs" || len(q.Payload) != 4 {
		return
	}
	i := int(binary.BigEndian.Uint32(q.Payload))
	m.mu.Lock()
	enc := m.localEnc
	m.mu.Unlock()
	if enc == nil {
		enc = encodeSet(m.cfg.NodeName, nil)
	}
	n := (len(enc) + chunkBytes - 1) / chunkBytes
	if i >= n {
		return
	}
	chunk := enc[i*chunkBytes : min((i+1)*chunkBytes, len(enc))]
	resp := make([]byte, 4, 4+len(chunk))
	binary.BigEndian.PutUint32(resp, uint32(n))
	if err := q.Respond(append(resp, chunk...)); err != nil {
		m.log.Debug("answer records query", "err", err)
	}
}

// antiEntropy pulls the full set of every alive peer whose tag digest
// differs from what this node holds: a lost event heals within a round.
//
// A mismatch is acted on once it has lasted pullDelay: a change travels
// both as an event with the set and as the digest in the tags, in either
// order, and whichever comes second usually follows within gossip's few
// rounds. Pulling at once would cost a fleet-wide query per peer per
// change, for nothing; and taking a digest that is about to be replaced
// at its word (the empty set needs no pull) would drop records that just
// arrived by event.
func (m *Mesh) antiEntropy(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	recheck := time.NewTimer(time.Hour)
	defer recheck.Stop()
	// A mismatch's digest and since when it differs: a new digest starts
	// the wait again (measured: timing from the first mismatch instead
	// left the 50-node benchmark with multi-second outliers). A set that
	// churns faster than the delay is too big for events, and its
	// digest-only events pull it at once.
	type mismatch struct {
		want  string
		since time.Time
	}
	seen := map[string]mismatch{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.closed:
			return
		case <-tick.C:
		case <-m.pullNow:
		case <-recheck.C:
		}
		m.expireGrace()
		start := time.Now()
		var next time.Duration
		alive := map[string]bool{}
		for _, mb := range m.serf.Members() {
			if mb.Name == m.cfg.NodeName || mb.Status != serf.StatusAlive {
				continue
			}
			alive[mb.Name] = true
			want := mb.Tags["d"]
			m.mu.Lock()
			have := m.peers[mb.Name].digest
			last, wasGone := m.gone[mb.Name]
			announced, soon := m.pullSoon[mb.Name]
			delete(m.pullSoon, mb.Name)
			pend, pending := m.pending[mb.Name]
			if pending && (pend.digest == want || pend.digest == have) {
				delete(m.pending, mb.Name)
			}
			m.mu.Unlock()
			if pending && pend.digest == want && want != have {
				// The set came by event, and now its sender's tags vouch
				// for it: nothing to fetch.
				m.store(mb.Name, want, pend.records)
				delete(seen, mb.Name)
				continue
			}
			if soon && announced != have {
				// A digest-only event: the set changed, and only a pull
				// brings it; the tags may not say so yet.
				delete(seen, mb.Name)
				if err := m.pull(mb.Name); err != nil {
					m.log.Debug("pull records", "node", mb.Name, "err", err)
				}
				continue
			}
			if want == "" || want == have {
				delete(seen, mb.Name)
				continue
			}
			if wasGone && last.digest == want {
				// Back with the set it had: nothing to fetch, and no
				// reason to wait.
				m.store(mb.Name, want, last.records)
				delete(seen, mb.Name)
				continue
			}
			mm, ok := seen[mb.Name]
			if !ok || mm.want != want {
				mm = mismatch{want: want, since: start}
				seen[mb.Name] = mm
			}
			if wait := pullDelay - start.Sub(mm.since); wait > 0 {
				if next == 0 || wait < next {
					next = wait
				}
				continue
			}
			delete(seen, mb.Name)
			if want == emptyDigest {
				// Nothing to fetch: a node with no records costs the
				// fleet no query.
				m.store(mb.Name, want, nil)
				continue
			}
			if err := m.pull(mb.Name); err != nil {
				m.log.Debug("pull records", "node", mb.Name, "err", err)
			}
		}
		for name := range seen {
			if !alive[name] {
				delete(seen, name)
			}
		}
		if next > 0 {
			recheck.Reset(next)
		}
	}
}

// pullDelay is how long a peer's digest may differ from the set held
// before the set is pulled: a few gossip rounds.
const pullDelay = 500 * time.Millisecond

// pull fetches a peer's record set chunk by chunk with Serf queries.
func (m *Mesh) pull(node string) error {
	m.pulls.Add(1)
	m.mu.Lock()
	held := m.peers[node].digest
	m.mu.Unlock()
	var buf []byte
	for i, n := 0, 1; i < n; i++ {
		payload := make([]byte, 4)
		binary.BigEndian.PutUint32(payload, uint32(i))
		resp, err := m.serf.Query("recs", payload, &serf.QueryParam{FilterNodes: []string{node}, Timeout: time.Second})
		if err != nil {
			return err
		}
		// Only node answers (FilterNodes): stop at its answer instead of
		// waiting out the query's timeout, a second per chunk.
		var got []byte
		for r := range resp.ResponseCh() {
			if r.From == node {
				got = r.Payload
				break
			}
		}
		resp.Close()
		if len(got) < 4 {
			return fmt.Errorf("no answer from %s for chunk %d", node, i)
		}
		n = int(binary.BigEndian.Uint32(got[:4]))
		if n > 10000 {
			return fmt.Errorf("%s: absurd chunk count %d", node, n)
		}
		buf = append(buf, got[4:]...)
	}
	set, rs, err := decodeSet(buf)
	if err != nil {
		return err
	}
	if set.Node != node || set.Digest != digestOf(rs) {
		return fmt.Errorf("%s: inconsistent record set", node)
	}
	if _, alive := m.advertised(node); !alive {
		return nil
	}
	rs = m.ownOnly(node, rs)
	// The node answered with the set it had then, at least as new as
	// what was held when the pull began; keep it unless a set came by
	// event meanwhile, which may be newer still. (Not the tags' digest:
	// it can lag the event that made this pull.)
	// Checked and stored under one lock, or an event could land between.
	m.mu.Lock()
	if m.peers[node].digest != held {
		m.mu.Unlock()
		return fmt.Errorf("%s: a set came by event during the pull", node)
	}
	changed := m.setLocked(node, set.Digest, rs)
	m.mu.Unlock()
	if changed {
		m.notify()
	}
	return nil
}

// advertised is the records digest in a member's tags, and whether the
// member is alive.
func (m *Mesh) advertised(node string) (string, bool) {
	for _, mb := range m.serf.Members() {
		if mb.Name == node {
			return mb.Tags["d"], mb.Status == serf.StatusAlive
		}
	}
	return "", false
}

// suppressEvents stops record events, so tests can prove anti-entropy.
func (m *Mesh) suppressEvents(on bool) {
	m.mu.Lock()
	m.suppress = on
	m.mu.Unlock()
}

// freezeDigest leaves the digest in the tags as it is, so tests can prove
// what events alone carry.
func (m *Mesh) freezeDigest(on bool) {
	m.mu.Lock()
	m.frozen = on
	m.mu.Unlock()
}
