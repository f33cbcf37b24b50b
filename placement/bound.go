package placement

import (
	"math"

	"github.com/shoal-run/shoal"
)

// Bounded loads: of a service with R replicas, a node n may hold at most
// ceil(R·w(n)/Σw) slots, Σw over the nodes that take a share of the
// service; with spread set to a label, each value of the label may hold at
// most ceil(R·W(v)/Σw), W(v) the summed weight of its nodes. That is
// consistent hashing with bounded loads with ε = 0; doc.go says why. Each
// holder also gets at least the floor of its share, so the counts are an
// apportionment: with equal weights no two nodes differ by more than one.
//
// The comparisons are made in integers: a node or label value holding h
// slots is under its bound for k slots when h·Σu < k·u, u its weight in
// units of 1/1024. Floats would round differently around exact shares (4
// of 8 slots on half the weight) on different sums, and every node of a
// fleet must reach the same answer.

// unitsPerWeight is the resolution of weights in bounds: a 1,024th of a
// core. Weights up to millions of cores times replicas up to millions stay
// far inside int64.
const unitsPerWeight = 1024

// weightUnits is w in whole units; a positive weight is at least one unit,
// so every node that takes a share has a bound of at least one slot.
func weightUnits(w float64) int64 {
	if !(w > 0) {
		return 0
	}
	return max(1, int64(math.Round(w*unitsPerWeight)))
}

// Bounds returns the most slots of svc each node may hold, and with spread
// set to a label the most each value of the label may hold, exactly as Plan
// computes them. Nodes that take no share of svc (they lack its constraint
// labels, or could not hold one slot when empty) are absent; byLabel is
// nil with spread "node".
func Bounds(svc *shoal.Service, nodes []shoal.Node) (byNode, byLabel map[string]int) {
	var total int64
	units := map[string]int64{}
	labelU := map[string]int64{}
	label := svc.Spread != "" && svc.Spread != "node"
	for _, n := range nodes {
		if u := weightUnits(Weight(n)); u > 0 && matches(n, svc.Constraints) && holds(n, svc.Resources) {
			units[n.Name] = u
			total += u
			if label {
				labelU[n.Labels[svc.Spread]] += u
			}
		}
	}
	bound := func(u int64) int { return int((int64(svc.Replicas)*u + total - 1) / total) }
	byNode = map[string]int{}
	for name, u := range units {
		byNode[name] = bound(u)
		if !label && svc.Replicas <= len(units) {
			byNode[name] = min(byNode[name], 1)
		}
	}
	if label {
		byLabel = map[string]int{}
		for v, u := range labelU {
			byLabel[v] = bound(u)
		}
	}
	return byNode, byLabel
}

// labelIndex numbers the values of one label across the nodes of a plan;
// a node without the label has the value "".
type labelIndex struct {
	of     []int32 // per node
	values int
}

func (t *nodeTable) labelIndex(label string) *labelIndex {
	if li, ok := t.labels[label]; ok {
		return li
	}
	li := &labelIndex{of: make([]int32, len(t.nodes))}
	ids := map[string]int32{}
	for i, n := range t.nodes {
		v := n.Labels[label]
		id, ok := ids[v]
		if !ok {
			id = int32(len(ids))
			ids[v] = id
		}
		li.of[i] = id
	}
	li.values = len(ids)
	t.labels[label] = li
	return li
}

// share is the bounded-load bookkeeping of the service being placed. With
// spread "node" the bounds and floors are per node; with a label, the
// bounds are per node and per label value and the floors per label value.
type share struct {
	total   int64       // Σ units over the nodes that take a share
	label   *labelIndex // nil with spread "node"
	labelU  []int64     // per label value: summed units of its sharing nodes
	labelN  []int32     // per label value: slots held so far
	floorN  []int32     // per node: floor(R·u/Σu), spread "node" only
	floorL  []int32     // per label value: floor(R·U/Σu)
	deficit int64       // slots still owed to holders below their floor
	// distinct: no more slots than sharing nodes, so each node's bound is
	// one: "replicas on distinct nodes where possible" also for a node a
	// little above the average weight, whose ceil(R·w/Σw) would be two.
	distinct bool
}

func (sh *share) reset(t *nodeTable, elig []int32, spread string) {
	sh.total = 0
	for _, i := range elig {
		sh.total += t.units[i]
	}
	sh.label = nil
	if spread == "" || spread == "node" {
		return
	}
	sh.label = t.labelIndex(spread)
	sh.labelU = append(sh.labelU[:0], make([]int64, sh.label.values)...)
	sh.labelN = append(sh.labelN[:0], make([]int32, sh.label.values)...)
	for _, i := range elig {
		sh.labelU[sh.label.of[i]] += t.units[i]
	}
}

func (sh *share) byLabel() bool { return sh.label != nil }

// floors sets every holder's floor, floor(R·u/Σu), and the deficit: the
// floors are what makes equal weights end with a skew of at most one.
func (sh *share) floors(t *nodeTable, elig []int32, replicas int64) {
	sh.deficit = 0
	// Label balance comes first: a label value's floor may need two slots
	// on one of its nodes.
	sh.distinct = sh.label == nil && replicas <= int64(len(elig))
	if sh.label != nil {
		sh.floorL = append(sh.floorL[:0], make([]int32, len(sh.labelU))...)
		for v, u := range sh.labelU {
			sh.floorL[v] = int32(replicas * u / sh.total)
			sh.deficit += int64(sh.floorL[v])
		}
		return
	}
	if len(sh.floorN) < len(t.nodes) {
		sh.floorN = make([]int32, len(t.nodes))
	}
	clear(sh.floorN)
	if replicas*t.maxUnits < sh.total {
		return // every floor is zero: the common case of a large fleet
	}
	for _, i := range elig {
		sh.floorN[i] = int32(replicas * t.units[i] / sh.total)
		sh.deficit += int64(sh.floorN[i])
	}
}

// below reports whether node i's holder (the node, or its label value) is
// still below its floor.
func (sh *share) below(used []int32, i int) bool {
	if sh.label != nil {
		v := sh.label.of[i]
		return sh.labelN[v] < sh.floorL[v]
	}
	return used[i] < sh.floorN[i]
}

// floorsKept reports whether giving node i the next slot, with left slots
// still to place including this one, leaves enough for every floor.
func (sh *share) floorsKept(used []int32, i int, left int64) bool {
	d := sh.deficit
	if sh.below(used, i) {
		d--
	}
	return left-1 >= d
}

// nodeUnder reports whether node i may take one more of r slots:
// used < ceil(r·u/Σu).
func (sh *share) nodeUnder(t *nodeTable, used []int32, i int, r int64) bool {
	if sh.distinct {
		return used[i] == 0
	}
	return int64(used[i])*sh.total < r*t.units[i]
}

// labelUnder is nodeUnder for node i's value of the spread label; always
// true with spread "node".
func (sh *share) labelUnder(i int, r int64) bool {
	if sh.label == nil {
		return true
	}
	v := sh.label.of[i]
	return int64(sh.labelN[v])*sh.total < r*sh.labelU[v]
}

// add counts a slot placed on node i; call it before used[i] grows.
func (sh *share) add(used []int32, i int) {
	if sh.below(used, i) {
		sh.deficit--
	}
	if sh.label != nil {
		sh.labelN[sh.label.of[i]]++
	}
}
