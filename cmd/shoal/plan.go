package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/placement"
)

func init() {
	register(command{
		name:  "plan",
		usage: "show where every slot goes: shoal plan [DIR] --nodes nodes.json | --agent ADDR [--base DIR | --base-rev REV]",
		run:   runPlan,
	})
}

// planOutput is the -o json document of shoal plan.
type planOutput struct {
	*placement.Placement
	Diff *placement.Changes `json:"diff,omitempty"`
}

func runPlan(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("plan", stderr)
	nodesFile := fs.String("nodes", "", "JSON file of nodes: [{\"name\":\"n1\",\"cpu\":4,\"memory\":\"8Gi\",\"labels\":{\"zone\":\"a\"}}, ...]")
	agent := fs.String("agent", "", "read the live members from this agent's API instead of --nodes")
	token := fs.String("token", os.Getenv("SHOAL_TOKEN"), "agent API token (or SHOAL_TOKEN)")
	base := fs.String("base", "", "another checkout of the specs: show what changes from it")
	baseRev := fs.String("base-rev", "", "a commit of the repository DIR is in: show what changes from it")
	output := fs.String("o", "text", "output format: text or json")
	// Accept DIR before or after the flags.
	dir := "."
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		dir, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	switch {
	case fs.NArg() == 1 && dir == ".":
		dir = fs.Arg(0)
	case fs.NArg() > 0:
		return 1, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *output != "text" && *output != "json" {
		return 1, fmt.Errorf("-o %q: want text or json", *output)
	}
	if (*nodesFile == "") == (*agent == "") {
		return 1, errors.New("give the nodes with --nodes FILE or --agent ADDR (one of them)")
	}
	if *base != "" && *baseRev != "" {
		return 1, errors.New("give --base or --base-rev, not both")
	}

	var nodes []shoal.Node
	var err error
	if *nodesFile != "" {
		nodes, err = readNodesFile(*nodesFile)
	} else {
		nodes, err = liveNodes(newAPIClient(*agent, *token))
	}
	if err != nil {
		return 1, err
	}
	spec, err := shoal.LoadDir(dir)
	if err != nil {
		return 1, err
	}
	out := planOutput{Placement: placement.Plan(spec, nodes)}
	if *base != "" || *baseRev != "" {
		var baseSpec *shoal.Spec
		if *base != "" {
			baseSpec, err = shoal.LoadDir(*base)
		} else {
			baseSpec, err = loadRev(dir, *baseRev)
		}
		if err != nil {
			return 1, fmt.Errorf("base: %w", err)
		}
		d := placement.Diff(placement.Plan(baseSpec, nodes), out.Placement)
		out.Diff = &d
	}
	if *output == "json" {
		if err := printJSON(stdout, out); err != nil {
			return 1, err
		}
	} else {
		printPlan(stdout, spec, nodes, out)
	}
	if len(out.Unplaced) > 0 {
		return 2, nil
	}
	return 0, nil
}

// nodeEntry is one node of nodes.json; pointers tell a missing field from
// a zero one.
type nodeEntry struct {
	Name   *string           `json:"name"`
	CPU    *float64          `json:"cpu"`
	Memory *shoal.Bytes      `json:"memory"`
	Labels map[string]string `json:"labels"`
}

func readNodesFile(path string) ([]shoal.Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nodes: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var entries []nodeEntry
	if err := dec.Decode(&entries); err != nil {
		return nil, fmt.Errorf("nodes %s: %w (want [{\"name\":\"n1\",\"cpu\":4,\"memory\":\"8Gi\",\"labels\":{}}, ...])", path, err)
	}
	var errs []error
	seen := map[string]int{}
	nodes := make([]shoal.Node, 0, len(entries))
	for i, e := range entries {
		where := fmt.Sprintf("nodes %s: node %d", path, i)
		if e.Name == nil || *e.Name == "" {
			errs = append(errs, fmt.Errorf("%s: missing name", where))
			continue
		}
		where = fmt.Sprintf("nodes %s: node %q", path, *e.Name)
		if j, dup := seen[*e.Name]; dup {
			errs = append(errs, fmt.Errorf("%s: duplicate name (also node %d)", where, j))
		}
		seen[*e.Name] = i
		if e.CPU == nil {
			errs = append(errs, fmt.Errorf("%s: missing cpu", where))
		} else if *e.CPU < 0 {
			errs = append(errs, fmt.Errorf("%s: negative cpu %g", where, *e.CPU))
		}
		if e.Memory == nil {
			errs = append(errs, fmt.Errorf("%s: missing memory", where))
		}
		if e.CPU != nil && e.Memory != nil {
			nodes = append(nodes, shoal.Node{Name: *e.Name, CPU: *e.CPU, Memory: *e.Memory, Labels: e.Labels})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return nodes, nil
}

// liveNodes reads the alive members of a running fleet.
func liveNodes(c *apiClient) ([]shoal.Node, error) {
	var members []memberView
	if err := c.getJSON("/v1/members", &members); err != nil {
		return nil, err
	}
	var nodes []shoal.Node
	for _, m := range members {
		if m.Status == "alive" {
			nodes = append(nodes, shoal.Node{Name: m.Name, CPU: m.CPU, Memory: m.Memory, Labels: m.Labels})
		}
	}
	return nodes, nil
}

// loadRev loads the specs under dir as they were at a commit of the
// repository dir is in.
func loadRev(dir, rev string) (*shoal.Spec, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	root := abs
	for {
		if _, err := os.Stat(filepath.Join(root, ".git")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			return nil, fmt.Errorf("%s is not inside a Git repository", dir)
		}
		root = parent
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil {
		return nil, err
	}
	fsys, commit, err := gitsync.OpenRevFS(root, rev)
	if err != nil {
		return nil, err
	}
	spec, err := shoal.LoadSpec(fsys, filepath.ToSlash(rel))
	if err != nil {
		return nil, fmt.Errorf("specs at %s (%s): %w", rev, short(commit), err)
	}
	return spec, nil
}

func printPlan(w io.Writer, spec *shoal.Spec, nodes []shoal.Node, out planOutput) {
	p := out.Placement
	fmt.Fprintf(w, "spec %s: %d services, %d slots on %d nodes\n\nSERVICE SLOTS\n", spec.Hash[:12], len(spec.Services), spec.Replicas(), len(p.Nodes))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSLOT\tNODE")
	for _, a := range p.Assignments {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", a.Service, a.Slot, a.Node)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nNODES")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCPU USED\tMEMORY USED\tSLOTS")
	slots := map[string]int{}
	for _, a := range p.Assignments {
		slots[a.Node]++
	}
	for _, n := range p.Nodes {
		fmt.Fprintf(tw, "%s\t%g/%g\t%s/%s\t%d\n", n.Name, n.CPUUsed, n.CPU, n.MemoryUsed, n.Memory, slots[n.Name])
	}
	tw.Flush()
	printShares(w, spec, p, nodes)
	if d := out.Diff; d != nil {
		fmt.Fprintln(w, "\nCHANGES FROM BASE")
		if d.Empty() {
			fmt.Fprintln(w, "no slot changes")
		}
		for _, a := range d.Added {
			fmt.Fprintf(w, "+ %s/%d on %s\n", a.Service, a.Slot, a.Node)
		}
		for _, a := range d.Removed {
			fmt.Fprintf(w, "- %s/%d from %s\n", a.Service, a.Slot, a.Node)
		}
		for _, m := range d.Moved {
			fmt.Fprintf(w, "~ %s/%d %s -> %s\n", m.Service, m.Slot, m.From, m.To)
		}
	}
	if len(p.Unplaced) > 0 {
		fmt.Fprintln(w, "\nUNPLACED")
		for _, u := range p.Unplaced {
			fmt.Fprintf(w, "%s/%d: %s\n", u.Service, u.Slot, u.Reason)
		}
	}
}

// printShares shows, per service, the largest share any node and any
// value of its spread label holds, next to the bound placement keeps it
// within: the figure that says what losing one node or zone costs.
func printShares(w io.Writer, spec *shoal.Spec, p *placement.Placement, nodes []shoal.Node) {
	labels := map[string]map[string]string{}
	for _, n := range nodes {
		labels[n.Name] = n.Labels
	}
	held := map[string]map[string]int{}
	for _, a := range p.Assignments {
		if held[a.Service] == nil {
			held[a.Service] = map[string]int{}
		}
		held[a.Service][a.Node]++
	}
	// largest picks the holder with the most slots, the first name on a tie.
	largest := func(m map[string]int) (string, int) {
		best, most := "", 0
		for k, c := range m {
			if c > most || (c == most && k < best) {
				best, most = k, c
			}
		}
		return best, most
	}
	fmt.Fprintln(w, "\nLARGEST SHARES")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tREPLICAS\tNODE\tHOLDS\tBOUND\tSPREAD VALUE\tHOLDS\tBOUND")
	for i := range spec.Services {
		svc := &spec.Services[i]
		byNode, byLabel := placement.Bounds(svc, nodes)
		name, most := largest(held[svc.Name])
		nodeCols := "-\t-\t-"
		if most > 0 {
			nodeCols = fmt.Sprintf("%s\t%d\t%d", name, most, byNode[name])
		}
		labelCols := "-\t-\t-"
		if byLabel != nil {
			perValue := map[string]int{}
			for n, c := range held[svc.Name] {
				perValue[labels[n][svc.Spread]] += c
			}
			if v, c := largest(perValue); c > 0 {
				labelCols = fmt.Sprintf("%s=%s\t%d\t%d", svc.Spread, v, c, byLabel[v])
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", svc.Name, svc.Replicas, nodeCols, labelCols)
	}
	tw.Flush()
}
