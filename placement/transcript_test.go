package placement_test

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/placement"
)

// TestTranscripts runs the scenarios in testdata/*.txt. Commands:
//
//	node name=N cpu=C memory=M [labels=k=v,...]   add or replace a node
//	remove-node name=N
//	service name=S replicas=R [cpu=C] [memory=M] [spread=L] [constraints=k=v,...]
//	remove-service name=S
//	plan      print the placement; it becomes the base of the next diff
//	diff      plan again and print what changed since the last plan
//
// Regenerate expected output with: go test ./placement -run Transcripts -rewrite
func TestTranscripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if !strings.HasSuffix(path, ".txt") {
			return
		}
		nodes := map[string]shoal.Node{}
		services := map[string]shoal.Service{}
		var last *placement.Placement
		current := func() (*shoal.Spec, []shoal.Node) {
			spec := &shoal.Spec{}
			for _, s := range services {
				spec.Services = append(spec.Services, s)
			}
			sort.Slice(spec.Services, func(i, j int) bool { return spec.Services[i].Name < spec.Services[j].Name })
			var ns []shoal.Node
			for _, n := range nodes {
				ns = append(ns, n)
			}
			return spec, ns
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			arg := func(key, def string) string {
				if a, ok := d.Arg(key); ok {
					return strings.Join(a.Vals, ",")
				}
				return def
			}
			labels := func(key string) map[string]string {
				m := map[string]string{}
				for _, kv := range strings.Split(arg(key, ""), ",") {
					if k, v, ok := strings.Cut(kv, "="); ok {
						m[k] = v
					}
				}
				return m
			}
			bytes := func(key, def string) shoal.Bytes {
				b, err := shoal.ParseBytes(arg(key, def))
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			num := func(key, def string) float64 {
				f, err := strconv.ParseFloat(arg(key, def), 64)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			switch d.Cmd {
			case "node":
				nodes[arg("name", "")] = shoal.Node{Name: arg("name", ""), CPU: num("cpu", "4"), Memory: bytes("memory", "8Gi"), Labels: labels("labels")}
				return ""
			case "remove-node":
				delete(nodes, arg("name", ""))
				return ""
			case "service":
				services[arg("name", "")] = shoal.Service{
					Name: arg("name", ""), Replicas: int(num("replicas", "1")), Spread: arg("spread", "node"),
					Resources:   shoal.Resources{CPU: num("cpu", "0.1"), Memory: bytes("memory", "128Mi")},
					Constraints: labels("constraints"),
				}
				return ""
			case "remove-service":
				delete(services, arg("name", ""))
				return ""
			case "plan":
				last = placement.Plan(current())
				return formatPlan(last)
			case "diff":
				next := placement.Plan(current())
				if last == nil {
					last = &placement.Placement{}
				}
				c := placement.Diff(last, next)
				last = next
				return formatChanges(c)
			}
			t.Fatalf("unknown command %q", d.Cmd)
			return ""
		})
	})
}

func formatPlan(p *placement.Placement) string {
	var b strings.Builder
	for _, a := range p.Assignments {
		fmt.Fprintf(&b, "%s/%d -> %s\n", a.Service, a.Slot, a.Node)
	}
	for _, u := range p.Unplaced {
		fmt.Fprintf(&b, "%s/%d unplaced: %s\n", u.Service, u.Slot, u.Reason)
	}
	for _, n := range p.Nodes {
		fmt.Fprintf(&b, "node %s cpu %g/%g memory %s/%s\n", n.Name, n.CPUUsed, n.CPU, n.MemoryUsed, n.Memory)
	}
	return b.String()
}

func formatChanges(c placement.Changes) string {
	if c.Empty() {
		return "no changes\n"
	}
	var b strings.Builder
	for _, a := range c.Added {
		fmt.Fprintf(&b, "+ %s/%d on %s\n", a.Service, a.Slot, a.Node)
	}
	for _, a := range c.Removed {
		fmt.Fprintf(&b, "- %s/%d from %s\n", a.Service, a.Slot, a.Node)
	}
	for _, m := range c.Moved {
		fmt.Fprintf(&b, "~ %s/%d %s -> %s\n", m.Service, m.Slot, m.From, m.To)
	}
	return b.String()
}
