package placement_test

import (
	"fmt"
	"testing"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/placement"
)

// fleet makes n nodes of three sizes across three zones.
func fleet(n int) []shoal.Node {
	nodes := make([]shoal.Node, n)
	for i := range nodes {
		size := float64(int(1) << (i % 3)) // 1, 2, 4
		nodes[i] = shoal.Node{
			Name:   fmt.Sprintf("node-%05d", i),
			CPU:    8 * size,
			Memory: shoal.Bytes(16<<30) * shoal.Bytes(size),
			Labels: map[string]string{"zone": string(rune('a' + i%3))},
		}
	}
	return nodes
}

// specOf makes services of 10 replicas each, slots in total.
func specOf(slots int) *shoal.Spec {
	spec := &shoal.Spec{}
	for i := 0; i < slots/10; i++ {
		spec.Services = append(spec.Services, shoal.Service{
			Name: fmt.Sprintf("svc-%05d", i), Replicas: 10,
			Resources: shoal.Resources{CPU: 0.1, Memory: 64 << 20},
			Spread:    "node",
		})
	}
	return spec
}

func benchPlan(b *testing.B, nodes, slots int) {
	ns, spec := fleet(nodes), specOf(slots)
	b.ResetTimer()
	for b.Loop() {
		p := placement.Plan(spec, ns)
		if len(p.Unplaced) > 0 {
			b.Fatalf("%d unplaced", len(p.Unplaced))
		}
	}
	b.ReportMetric(float64(slots)*float64(b.N)/b.Elapsed().Seconds(), "slots/s")
}

func BenchmarkPlan(b *testing.B) {
	b.Run("nodes=1000/slots=10000", func(b *testing.B) { benchPlan(b, 1000, 10000) })
	b.Run("nodes=5000/slots=100000", func(b *testing.B) { benchPlan(b, 5000, 100000) })
}
