package placement_test

import (
	"fmt"
	"math"
	"testing"

	"pgregory.net/rapid"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/placement"
)

// shares is the weight of each node that takes a share of svc, worked out
// here rather than by the package: it carries the constraint labels and
// could hold one slot when empty.
func shares(svc *shoal.Service, nodes []shoal.Node) map[string]float64 {
	w := map[string]float64{}
	for _, n := range nodes {
		ok := placement.Weight(n) > 0 && n.CPU+1e-9 >= svc.Resources.CPU && n.Memory >= svc.Resources.Memory
		for k, v := range svc.Constraints {
			ok = ok && n.Labels[k] == v
		}
		if ok {
			w[n.Name] = placement.Weight(n)
		}
	}
	return w
}

// counts is how many slots of each service each node, and each value of
// the service's spread label, holds.
func counts(spec *shoal.Spec, nodes []shoal.Node, p *placement.Placement) (byNode, byLabel map[string]map[string]int) {
	byName := map[string]shoal.Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	byNode, byLabel = map[string]map[string]int{}, map[string]map[string]int{}
	for _, s := range spec.Services {
		byNode[s.Name], byLabel[s.Name] = map[string]int{}, map[string]int{}
	}
	for _, a := range p.Assignments {
		byNode[a.Service][a.Node]++
		if l := spec.Service(a.Service).Spread; l != "node" {
			byLabel[a.Service][byName[a.Node].Labels[l]]++
		}
	}
	return byNode, byLabel
}

// checkBounds: with capacity to spare, every node holds at most
// ceil(R·w/Σw) slots of a service, and with spread "node" at least the
// floor; with spread by label the same holds per label value.
func checkBounds(t fatalHelper, spec *shoal.Spec, nodes []shoal.Node, p *placement.Placement) {
	t.Helper()
	byNode, byLabel := counts(spec, nodes, p)
	for _, svc := range spec.Services {
		w := shares(&svc, nodes)
		total := 0.0
		labelW := map[string]float64{}
		for _, n := range nodes {
			if w[n.Name] > 0 {
				total += w[n.Name]
				labelW[n.Labels[svc.Spread]] += w[n.Name]
			}
		}
		quota := func(x float64) float64 { return float64(svc.Replicas) * x / total }
		for name, x := range w {
			c := byNode[svc.Name][name]
			if hi := math.Ceil(quota(x) - 1e-9); float64(c) > hi {
				t.Fatalf("%s: %s holds %d of %d, bound %g", svc.Name, name, c, svc.Replicas, hi)
			}
			if lo := math.Floor(quota(x) + 1e-9); svc.Spread == "node" && float64(c) < lo {
				t.Fatalf("%s: %s holds %d of %d, floor %g", svc.Name, name, c, svc.Replicas, lo)
			}
		}
		if svc.Spread == "node" {
			continue
		}
		for v, x := range labelW {
			c := float64(byLabel[svc.Name][v])
			if c > math.Ceil(quota(x)-1e-9) || c < math.Floor(quota(x)+1e-9) {
				t.Fatalf("%s: %s=%s holds %g of %d, share %.3f", svc.Name, svc.Spread, v, c, svc.Replicas, quota(x))
			}
		}
	}
}

func TestPropertyBounds(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		nodes, spec := genFleet(t, true)
		for i := range spec.Services {
			spec.Services[i].Replicas = rapid.IntRange(0, 40).Draw(t, "replicas")
			spec.Services[i].Resources = shoal.Resources{CPU: 0.01, Memory: 1 << 20} // capacity to spare
		}
		p := placement.Plan(spec, nodes)
		checkInvariants(t, spec, nodes, p)
		checkBounds(t, spec, nodes, p)
		for _, svc := range spec.Services {
			byNode, byLabel := placement.Bounds(&svc, nodes)
			nc, lc := counts(spec, nodes, p)
			for n, c := range nc[svc.Name] {
				if c > byNode[n] {
					t.Fatalf("%s: %s holds %d, Bounds says %d", svc.Name, n, c, byNode[n])
				}
			}
			for v, c := range lc[svc.Name] {
				if c > byLabel[v] {
					t.Fatalf("%s: %s=%s holds %d, Bounds says %d", svc.Name, svc.Spread, v, c, byLabel[v])
				}
			}
		}
	})
}

// With equal weights no node, and no label value of equal total weight,
// holds more than one slot of a service beyond another.
func TestPropertyEqualWeightsSkew(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		zones := rapid.IntRange(1, 4).Draw(t, "zones")
		perZone := rapid.IntRange(1, 5).Draw(t, "per zone")
		var nodes []shoal.Node
		for z := 0; z < zones; z++ {
			for i := 0; i < perZone; i++ {
				nodes = append(nodes, node(fmt.Sprintf("n%d-%d", z, i), 64, 256<<30, fmt.Sprintf("zone=z%d", z)))
			}
		}
		spec := &shoal.Spec{}
		for i := range rapid.IntRange(1, 5).Draw(t, "services") {
			s := svc(fmt.Sprintf("s%d", i), rapid.IntRange(0, 50).Draw(t, "replicas"), 0.1, 1<<20)
			s.Spread = rapid.SampledFrom([]string{"node", "zone"}).Draw(t, "spread")
			spec.Services = append(spec.Services, s)
		}
		p := placement.Plan(spec, rapid.Permutation(nodes).Draw(t, "order"))
		byNode, byLabel := counts(spec, nodes, p)
		for _, s := range spec.Services {
			lo, hi := math.MaxInt, 0
			for _, n := range nodes {
				c := byNode[s.Name][n.Name]
				lo, hi = min(lo, c), max(hi, c)
			}
			if s.Spread == "node" && hi-lo > 1 {
				t.Fatalf("%s: node skew %d (%v)", s.Name, hi-lo, byNode[s.Name])
			}
			if s.Spread == "zone" {
				lo, hi = math.MaxInt, 0
				for z := 0; z < zones; z++ {
					c := byLabel[s.Name][fmt.Sprintf("z%d", z)]
					lo, hi = min(lo, c), max(hi, c)
				}
				if hi-lo > 1 {
					t.Fatalf("%s: zone skew %d (%v)", s.Name, hi-lo, byLabel[s.Name])
				}
			}
		}
	})
}
