package mesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/hashicorp/serf/serf"
)

// Traffic reports: every node gossips the rate of new connections its
// balancer takes per service, and every node sums the fresh reports. All
// nodes see the same sums (up to gossip delay), so they reach the same
// replica counts for autoscaled services with no leader to ask.

// loadTTL is how long a report counts: a node that stops reporting (it
// died, or its traffic went) stops adding to the sum.
const loadTTL = 10 * time.Second

// maxLoadPayload keeps one report within Serf's user event limit.
const maxLoadPayload = 400

type loadReport struct {
	Node  string             `json:"n"`
	Rates map[string]float64 `json:"r"`
}

type loadEntry struct {
	rate float64
	at   time.Time
}

// PublishLoad tells the fleet this node's new-connection rates per
// service, in as many events as the size limit needs.
func (m *Mesh) PublishLoad(rates map[string]float64) error {
	now := time.Now()
	m.mu.Lock()
	for svc, r := range rates {
		m.storeLoad(m.cfg.NodeName, svc, r, now)
	}
	m.mu.Unlock()
	var errs []error
	for _, payload := range encodeLoad(m.cfg.NodeName, rates) {
		if err := m.serf.UserEvent("load", payload, false); err != nil {
			errs = append(errs, fmt.Errorf("publish load: %w", err))
		}
	}
	return errors.Join(errs...)
}

// encodeLoad splits the rates into payloads under maxLoadPayload.
func encodeLoad(node string, rates map[string]float64) [][]byte {
	names := make([]string, 0, len(rates))
	for svc := range rates {
		names = append(names, svc)
	}
	sort.Strings(names)
	var out [][]byte
	cur := loadReport{Node: node, Rates: map[string]float64{}}
	flush := func() {
		if len(cur.Rates) > 0 {
			b, _ := json.Marshal(cur)
			out = append(out, b)
		}
		cur = loadReport{Node: node, Rates: map[string]float64{}}
	}
	for _, svc := range names {
		cur.Rates[svc] = math.Round(rates[svc]*10) / 10
		if b, _ := json.Marshal(cur); len(b) > maxLoadPayload {
			delete(cur.Rates, svc)
			flush()
			cur.Rates[svc] = math.Round(rates[svc]*10) / 10
		}
	}
	flush()
	return out
}

// decodeLoad parses and checks a report from the network.
func decodeLoad(b []byte) (loadReport, error) {
	var r loadReport
	if len(b) > 1024 {
		return r, errors.New("load report too large")
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("load report: %w", err)
	}
	if r.Node == "" {
		return r, errors.New("load report: no node")
	}
	for svc, v := range r.Rates {
		if svc == "" || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return r, fmt.Errorf("load report: bad rate %q=%v", svc, v)
		}
	}
	return r, nil
}

func (m *Mesh) handleLoad(e serf.UserEvent) {
	r, err := decodeLoad(e.Payload)
	if err != nil || r.Node == m.cfg.NodeName || !m.alive(r.Node) {
		return
	}
	now := time.Now()
	m.mu.Lock()
	for svc, v := range r.Rates {
		m.storeLoad(r.Node, svc, v, now)
	}
	m.mu.Unlock()
}

func (m *Mesh) storeLoad(node, svc string, rate float64, at time.Time) {
	if m.loads[node] == nil {
		m.loads[node] = map[string]loadEntry{}
	}
	m.loads[node][svc] = loadEntry{rate: rate, at: at}
}

// Load sums the fresh reports of alive members (this node included) per
// service.
func (m *Mesh) Load() map[string]float64 {
	alive := map[string]bool{m.cfg.NodeName: true}
	for _, mb := range m.serf.Members() {
		if mb.Status == serf.StatusAlive {
			alive[mb.Name] = true
		}
	}
	now := time.Now()
	out := map[string]float64{}
	m.mu.Lock()
	defer m.mu.Unlock()
	for node, svcs := range m.loads {
		if !alive[node] {
			delete(m.loads, node)
			continue
		}
		for svc, e := range svcs {
			if now.Sub(e.at) > loadTTL {
				delete(svcs, svc)
				continue
			}
			out[svc] += e.rate
		}
	}
	return out
}
