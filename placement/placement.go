package placement

import (
	"math"
	"sort"

	"github.com/shoal-run/shoal"
)

// Assignment is one slot placed on one node.
type Assignment struct {
	Service string `json:"service"`
	Slot    int    `json:"slot"`
	Node    string `json:"node"`
}

// Unplaced is a slot that fits on no node, and why.
type Unplaced struct {
	Service string `json:"service"`
	Slot    int    `json:"slot"`
	Reason  string `json:"reason"`
}

// Reasons a slot is unplaced.
const (
	ReasonConstraints = "no node matches constraints"
	ReasonCPU         = "insufficient cpu"
	ReasonMemory      = "insufficient memory"
)

// NodeUsage is a node's allocatable capacity and what the placement uses of it.
type NodeUsage struct {
	Name       string      `json:"name"`
	CPU        float64     `json:"cpu"`
	Memory     shoal.Bytes `json:"memory"`
	CPUUsed    float64     `json:"cpu_used"`
	MemoryUsed shoal.Bytes `json:"memory_used"`
}

// Placement is where every slot of a spec goes on a set of nodes.
// Assignments and Unplaced are sorted by service then slot; Nodes by name.
type Placement struct {
	Assignments []Assignment `json:"placements"`
	Unplaced    []Unplaced   `json:"unplaced"`
	Nodes       []NodeUsage  `json:"nodes"`
}

// ForNode returns the assignments of one node, sorted.
func (p *Placement) ForNode(name string) []Assignment {
	var out []Assignment
	for _, a := range p.Assignments {
		if a.Node == name {
			out = append(out, a)
		}
	}
	return out
}

// NodeOf returns the node a slot is placed on.
func (p *Placement) NodeOf(s shoal.Slot) (string, bool) {
	i := sort.Search(len(p.Assignments), func(i int) bool {
		a := p.Assignments[i]
		return a.Service > s.Service || (a.Service == s.Service && a.Slot >= s.Index)
	})
	if i < len(p.Assignments) && p.Assignments[i].Service == s.Service && p.Assignments[i].Slot == s.Index {
		return p.Assignments[i].Node, true
	}
	return "", false
}

// Weight is a node's capacity weight in rendezvous hashing: its cores plus
// a quarter of its memory in GiB, so one core counts like 4 GiB — the usual
// cloud ratio — and a node twice as big takes about twice the slots.
func Weight(n shoal.Node) float64 {
	return n.CPU + float64(n.Memory)/float64(4<<30)
}

// nodeTable is the nodes of one Plan call in canonical (name) order, with
// everything the inner loop needs in flat arrays.
type nodeTable struct {
	nodes    []shoal.Node
	hash     []uint64
	class    []int32   // index into weights
	weights  []float64 // distinct weights, ascending
	units    []int64   // Weight in whole units, for exact bounds
	maxUnits int64
	cpuFree  []float64
	memFree  []int64
	labels   map[string]*labelIndex // by spread label, built on first use
}

func newNodeTable(nodes []shoal.Node) *nodeTable {
	sorted := append([]shoal.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	// Duplicate names would make the plan depend on input order: keep the
	// first of each name in sorted order, which is input-order independent
	// only if duplicates are identical, so callers must not send them;
	// the CLI rejects them.
	t := &nodeTable{nodes: sorted, labels: map[string]*labelIndex{}}
	n := len(sorted)
	t.hash = make([]uint64, n)
	t.class = make([]int32, n)
	t.units = make([]int64, n)
	t.cpuFree = make([]float64, n)
	t.memFree = make([]int64, n)
	classOf := map[float64]int32{}
	var ws []float64
	for _, nd := range sorted {
		w := Weight(nd)
		if _, ok := classOf[w]; !ok {
			classOf[w] = 0
			ws = append(ws, w)
		}
	}
	sort.Float64s(ws)
	for i, w := range ws {
		classOf[w] = int32(i)
	}
	t.weights = ws
	for i, nd := range sorted {
		t.hash[i] = hashString(nd.Name)
		t.class[i] = classOf[Weight(nd)]
		t.units[i] = weightUnits(Weight(nd))
		t.maxUnits = max(t.maxUnits, t.units[i])
		t.cpuFree[i] = nd.CPU
		t.memFree[i] = int64(nd.Memory)
	}
	return t
}

// matches reports whether a node carries every label a workload requires.
func matches(n shoal.Node, constraints map[string]string) bool {
	for k, v := range constraints {
		if n.Labels[k] != v {
			return false
		}
	}
	return true
}

// holds reports whether an empty node could hold one slot of r at all.
func holds(n shoal.Node, r shoal.Resources) bool {
	return n.CPU+cpuEpsilon >= r.CPU && n.Memory >= r.Memory
}

// cpuEpsilon absorbs float error when summing fractional cores.
const cpuEpsilon = 1e-9

// Plan places every slot of every service of spec on nodes. It is a pure
// function: the same spec and the same set of nodes, in any order, give the
// same placement.
//
// Slots are taken in canonical order (services by name, slots ascending).
// Each goes to the node with the highest weighted rendezvous score for that
// slot among the nodes that match its constraints, have the CPU and memory
// left, stay within their bounded share of the service and keep it spread.
// See doc.go for the bound, the spread rules and the movement guarantees.
func Plan(spec *shoal.Spec, nodes []shoal.Node) *Placement {
	t := newNodeTable(nodes)
	p := &Placement{Assignments: []Assignment{}, Unplaced: []Unplaced{}}
	s := newScratch(len(t.nodes), len(t.weights))
	services := append([]shoal.Service(nil), spec.Services...)
	sort.Slice(services, func(i, j int) bool { return services[i].Name < services[j].Name })
	for i := range services {
		t.placeService(&services[i], s, p)
	}
	p.Nodes = make([]NodeUsage, len(t.nodes))
	for i, nd := range t.nodes {
		p.Nodes[i] = NodeUsage{
			Name: nd.Name, CPU: nd.CPU, Memory: nd.Memory,
			CPUUsed:    roundCPU(nd.CPU - t.cpuFree[i]),
			MemoryUsed: shoal.Bytes(int64(nd.Memory) - t.memFree[i]),
		}
	}
	return p
}

// roundCPU removes float noise from summed fractional cores so JSON output
// reads 1.5, not 1.4999999999999998.
func roundCPU(v float64) float64 { return math.Round(v*1e6) / 1e6 }

// scratch is per-Plan working memory reused across services.
type scratch struct {
	match    []bool  // carries the constraint labels
	eligible []bool  // matches and could hold one slot: takes a share
	used     []int32 // slots of the current service on each node
	reserved []int32 // how many later slots have this node as top choice
	bestU    []uint64
	bestN    []int32
	tops     []int32
	elig     []int32 // indices of eligible nodes
	share    share
}

func newScratch(nodes, classes int) *scratch {
	return &scratch{
		match:    make([]bool, nodes),
		eligible: make([]bool, nodes),
		used:     make([]int32, nodes),
		reserved: make([]int32, nodes),
		bestU:    make([]uint64, classes),
		bestN:    make([]int32, classes),
	}
}

// eligibleFor marks the nodes that take a share of svc: they carry its
// constraint labels and could hold one of its slots when empty. A node too
// small for even one slot takes no share, so its share is not left to the
// fallback. It reports whether any node matched the constraints.
func (t *nodeTable) eligibleFor(svc *shoal.Service, s *scratch) bool {
	s.elig = s.elig[:0]
	anyMatch := false
	for i := range t.nodes {
		s.match[i] = t.units[i] > 0 && matches(t.nodes[i], svc.Constraints)
		s.eligible[i] = s.match[i] && holds(t.nodes[i], svc.Resources)
		s.used[i], s.reserved[i] = 0, 0
		anyMatch = anyMatch || s.match[i]
		if s.eligible[i] {
			s.elig = append(s.elig, int32(i))
		}
	}
	return anyMatch
}

func (t *nodeTable) placeService(svc *shoal.Service, s *scratch, p *Placement) {
	anyMatch := t.eligibleFor(svc, s)
	if len(s.elig) == 0 {
		reason := ReasonConstraints
		if anyMatch {
			reason = t.why(s, svc.Resources.CPU)
		}
		for slot := 0; slot < svc.Replicas; slot++ {
			p.Unplaced = append(p.Unplaced, Unplaced{Service: svc.Name, Slot: slot, Reason: reason})
		}
		return
	}
	cpu, mem := svc.Resources.CPU, int64(svc.Resources.Memory)
	sh := &s.share
	sh.reset(t, s.elig, svc.Spread)
	base := hashString(svc.Name)

	// Pass 1: each slot's unconstrained top choice among eligible nodes.
	// Later slots reserve their top choices, so an earlier slot that must
	// move does not take a node another slot prefers (no cascades).
	s.tops = s.tops[:0]
	for slot := 0; slot < svc.Replicas; slot++ {
		top := t.top(slotKey(base, slot), s)
		s.tops = append(s.tops, int32(top))
		s.reserved[top]++
	}
	fits := func(i int) bool {
		return s.eligible[i] && t.cpuFree[i]+cpuEpsilon >= cpu && t.memFree[i] >= mem
	}
	replicas := int64(svc.Replicas)
	sh.floors(t, s.elig, replicas)
	for slot := 0; slot < svc.Replicas; slot++ {
		key := slotKey(base, slot)
		top := int(s.tops[slot])
		s.reserved[top]--
		left := int64(svc.Replicas - slot)
		ok := func(i int) bool {
			return fits(i) && sh.nodeUnder(t, s.used, i, replicas) && sh.labelUnder(i, replicas) && sh.floorsKept(s.used, i, left)
		}
		pick := -1
		if ok(top) {
			pick = top
		}
		if pick < 0 { // not the top choice of a later slot either
			pick = t.best(key, s, func(i int) bool { return ok(i) && s.reserved[i] == 0 })
		}
		if pick < 0 {
			pick = t.best(key, s, ok)
		}
		// Only capacity keeps every node from its share: exceed a bound
		// rather than leave the slot unplaced, the label's last.
		if pick < 0 && sh.byLabel() {
			pick = t.best(key, s, func(i int) bool { return fits(i) && sh.labelUnder(i, replicas) })
		}
		if pick < 0 {
			pick = t.best(key, s, func(i int) bool { return fits(i) && sh.nodeUnder(t, s.used, i, replicas) })
		}
		if pick < 0 {
			pick = t.best(key, s, fits)
		}
		if pick < 0 {
			p.Unplaced = append(p.Unplaced, Unplaced{Service: svc.Name, Slot: slot, Reason: t.why(s, cpu)})
			continue
		}
		t.cpuFree[pick] -= cpu
		t.memFree[pick] -= mem
		sh.add(s.used, pick)
		s.used[pick]++
		p.Assignments = append(p.Assignments, Assignment{Service: svc.Name, Slot: slot, Node: t.nodes[pick].Name})
	}
}

// TopChoice is the node slot i of a service prefers when nothing competes:
// its highest score among the nodes that take a share of it (they match the
// constraints and could hold one slot), ignoring free capacity, bounds and
// spread. "" when there is no such node.
func TopChoice(svc *shoal.Service, slot int, nodes []shoal.Node) string {
	t := newNodeTable(nodes)
	s := newScratch(len(t.nodes), len(t.weights))
	t.eligibleFor(svc, s)
	if len(s.elig) == 0 {
		return ""
	}
	return t.nodes[t.top(slotKey(hashString(svc.Name), slot), s)].Name
}

// why names the resource that keeps a slot off every eligible node.
func (t *nodeTable) why(s *scratch, cpu float64) string {
	for i := range t.nodes {
		if s.match[i] && t.cpuFree[i]+cpuEpsilon >= cpu {
			return ReasonMemory // some node has the CPU, so memory is short
		}
	}
	return ReasonCPU
}

// best returns the node with the highest weighted rendezvous score for key
// among nodes passing ok, or -1. Within one weight class the score is
// monotone in the hash value, so the loop only hashes and compares; the
// logarithm is taken once per class.
func (t *nodeTable) best(key uint64, s *scratch, ok func(int) bool) int {
	for c := range s.bestN {
		s.bestN[c] = -1
		s.bestU[c] = 0
	}
	for i, h := range t.hash {
		if !ok(i) {
			continue
		}
		u := mix64(key ^ h)
		c := t.class[i]
		if s.bestN[c] < 0 || u > s.bestU[c] {
			s.bestU[c], s.bestN[c] = u, int32(i)
		}
	}
	return t.pickClass(s)
}

// top is best over the eligible nodes with no other condition: the hot
// loop of Plan, kept free of indirect calls.
func (t *nodeTable) top(key uint64, s *scratch) int {
	if len(t.weights) == 1 {
		var bu uint64
		bn := int32(-1)
		for _, i := range s.elig {
			if u := mix64(key ^ t.hash[i]); bn < 0 || u > bu {
				bu, bn = u, i
			}
		}
		return int(bn)
	}
	for c := range s.bestN {
		s.bestN[c] = -1
		s.bestU[c] = 0
	}
	for _, i := range s.elig {
		u := mix64(key ^ t.hash[i])
		c := t.class[i]
		if s.bestN[c] < 0 || u > s.bestU[c] {
			s.bestU[c], s.bestN[c] = u, i
		}
	}
	return t.pickClass(s)
}

// pickClass compares the best node of each weight class by full score.
func (t *nodeTable) pickClass(s *scratch) int {
	pick, bestScore := -1, 0.0
	for c, n := range s.bestN {
		if n < 0 {
			continue
		}
		score := score(t.weights[c], s.bestU[c])
		if pick < 0 || score > bestScore || (score == bestScore && t.nodes[n].Name < t.nodes[pick].Name) {
			pick, bestScore = int(n), score
		}
	}
	return pick
}

// score is the weighted rendezvous score -w/ln(u) with u = (h+0.5)/2^64,
// a uniform value strictly inside (0, 1).
func score(w float64, h uint64) float64 {
	u := (float64(h>>11) + 0.5) / (1 << 53)
	return -w / math.Log(u)
}
