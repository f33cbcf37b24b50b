package mesh

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"

	"github.com/shoal-run/shoal"
)

// ErrPlaintextGossip is New's refusal to gossip in clear beyond loopback.
var ErrPlaintextGossip = errors.New("mesh: gossip beyond loopback needs an encryption key")

// IsLoopbackHost reports whether host binds loopback only.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// loadKeyring works out the gossip keys, primary first: the keyring file
// when it exists (it holds the keys of the last rotation, which win over
// the ones configured at first start), else Keys, else Key. A keyring
// that comes from the config is written to the file, so a rotation done
// later survives a restart.
func loadKeyring(cfg Config) ([][]byte, error) {
	if cfg.KeyringFile != "" {
		keys, err := ReadKeyringFile(cfg.KeyringFile)
		if err == nil {
			return keys, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	keys := cfg.Keys
	if len(keys) == 0 && len(cfg.Key) > 0 {
		keys = [][]byte{cfg.Key}
	}
	for _, k := range keys {
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("mesh: gossip key: %w", err)
		}
	}
	if len(keys) > 0 && cfg.KeyringFile != "" {
		if err := writeKeyringFile(cfg.KeyringFile, keys); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

// ReadKeyringFile reads a Serf keyring file: a JSON list of base64 keys,
// the primary first.
func ReadKeyringFile(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh: keyring %s: %w", path, err)
	}
	var enc []string
	if err := json.Unmarshal(data, &enc); err != nil || len(enc) == 0 {
		return nil, fmt.Errorf("mesh: keyring %s: want a JSON list of base64 keys", path)
	}
	keys := make([][]byte, len(enc))
	for i, s := range enc {
		k, err := base64.StdEncoding.DecodeString(s)
		if err == nil {
			err = memberlist.ValidateKey(k)
		}
		if err != nil {
			return nil, fmt.Errorf("mesh: keyring %s: key %d: %w", path, i+1, err)
		}
		keys[i] = k
	}
	return keys, nil
}

// writeKeyringFile writes keys as Serf does (mode 0600), through a
// temporary file so a crash leaves the old ring or the new one.
func writeKeyringFile(path string, keys [][]byte) error {
	enc := make([]string, len(keys))
	for i, k := range keys {
		enc[i] = base64.StdEncoding.EncodeToString(k)
	}
	data, _ := json.MarshalIndent(enc, "", "  ")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("mesh: keyring %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("mesh: keyring %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("mesh: keyring %s: %w", path, err)
	}
	return nil
}

// KeyringStatus is what the fleet's members answered to a keyring
// operation.
type KeyringStatus struct {
	// Keys maps each base64 key to how many members hold it.
	Keys map[string]int `json:"keys"`
	// Primary maps each base64 key to how many members encrypt with it.
	Primary   map[string]int    `json:"primary"`
	Members   int               `json:"members"`
	Responses int               `json:"responses"`
	Errors    map[string]string `json:"errors,omitempty"` // member → what went wrong
}

// ListKeys asks every member which gossip keys it holds.
func (m *Mesh) ListKeys() (KeyringStatus, error) {
	return keyOp("list", "", func(km *serf.KeyManager, _ string) (*serf.KeyResponse, error) { return km.ListKeys() }, m.serf)
}

// InstallKey adds a key to every member's ring; they still encrypt with
// the primary key, and now also accept the new one.
func (m *Mesh) InstallKey(key string) (KeyringStatus, error) {
	return keyOp("install", key, (*serf.KeyManager).InstallKey, m.serf)
}

// UseKey makes an installed key every member's primary.
func (m *Mesh) UseKey(key string) (KeyringStatus, error) {
	return keyOp("use", key, (*serf.KeyManager).UseKey, m.serf)
}

// RemoveKey takes a key off every member's ring; the primary cannot be.
func (m *Mesh) RemoveKey(key string) (KeyringStatus, error) {
	return keyOp("remove", key, (*serf.KeyManager).RemoveKey, m.serf)
}

func keyOp(name, key string, op func(*serf.KeyManager, string) (*serf.KeyResponse, error), s *serf.Serf) (KeyringStatus, error) {
	if key != "" {
		raw, err := base64.StdEncoding.DecodeString(key)
		if err == nil {
			err = memberlist.ValidateKey(raw)
		}
		if err != nil {
			return KeyringStatus{}, fmt.Errorf("keyring %s: %w", name, err)
		}
	}
	resp, err := op(s.KeyManager(), key)
	st := KeyringStatus{Keys: map[string]int{}, Primary: map[string]int{}}
	if resp != nil {
		st.Members, st.Responses = resp.NumNodes, resp.NumResp
		for k, n := range resp.Keys {
			st.Keys[k] = n
		}
		for k, n := range resp.PrimaryKeys {
			if k == "" {
				continue // install, use and remove answer with no keys
			}
			st.Primary[k] = n
		}
		for node, msg := range resp.Messages {
			if msg != "" {
				if st.Errors == nil {
					st.Errors = map[string]string{}
				}
				st.Errors[node] = msg
			}
		}
	}
	if err != nil {
		return st, fmt.Errorf("keyring %s: %w", name, err)
	}
	return st, nil
}

// mergeGuard is Serf's merge delegate: it refuses a joiner (or an alive
// message) that claims the name of a live member at another address,
// and a claim to this node's own name from elsewhere. With Serf's name
// conflict resolution off, that keeps an impostor from taking a live
// node's place or voting it out of the fleet.
type mergeGuard struct{ m *Mesh }

func (g mergeGuard) NotifyMerge(members []*serf.Member) error {
	for _, mb := range members {
		addr := net.JoinHostPort(mb.Addr.String(), fmt.Sprint(mb.Port))
		if mb.Name == g.m.cfg.NodeName {
			// Its own former address is this node's old entry, which
			// peers keep a while after a renumbering: that is no
			// impostor.
			if self := g.m.selfAddr(); self != "" && addr != self && !g.m.formerSelf(addr) {
				return fmt.Errorf("mesh: %s at %s claims this node's name", mb.Name, addr)
			}
			continue
		}
		if known, ok := g.m.liveAddr(mb.Name); ok && known != addr {
			return fmt.Errorf("mesh: %s at %s claims the name of a live member at %s", mb.Name, addr, known)
		}
	}
	return nil
}

// selfAddr is this node's gossip address once Serf runs.
func (m *Mesh) selfAddr() string {
	m.liveMu.Lock()
	defer m.liveMu.Unlock()
	return m.self
}

// liveAddr is the gossip address of a member last seen alive.
func (m *Mesh) liveAddr(name string) (string, bool) {
	m.liveMu.Lock()
	defer m.liveMu.Unlock()
	a, ok := m.live[name]
	return a, ok
}

// noteMember keeps the live members' addresses for mergeGuard, which runs
// inside memberlist's locks and so must not ask Serf.
func (m *Mesh) noteMember(t serf.EventType, mb serf.Member) {
	m.liveMu.Lock()
	defer m.liveMu.Unlock()
	switch t {
	case serf.EventMemberJoin, serf.EventMemberUpdate:
		m.live[mb.Name] = net.JoinHostPort(mb.Addr.String(), fmt.Sprint(mb.Port))
	case serf.EventMemberFailed, serf.EventMemberLeave, serf.EventMemberReap:
		delete(m.live, mb.Name)
	}
}

// ownRecords keeps the records whose address is the member's own
// advertised address: a member speaks for its own instances only, so it
// cannot send a service's traffic to a host of its choosing. addr is the
// member's address as Serf knows it.
func ownRecords(rs []shoal.Record, addr string) (kept []shoal.Record, dropped int) {
	kept = rs[:0:0]
	for _, r := range rs {
		if r.Addr == addr {
			kept = append(kept, r)
		} else {
			dropped++
		}
	}
	return kept, dropped
}

// memberAddr is a member's advertised IP, and whether it is alive.
func (m *Mesh) memberAddr(node string) (string, bool) {
	for _, mb := range m.serf.Members() {
		if mb.Name == node {
			return mb.Addr.String(), mb.Status == serf.StatusAlive
		}
	}
	return "", false
}
