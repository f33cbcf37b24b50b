package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestPlanExamples(t *testing.T) {
	code, out, errOut := runCLI(t, "plan", "../../examples/fleet", "--nodes", "../../examples/nodes.json", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc) != 3 || doc["placements"] == nil || doc["unplaced"] == nil || doc["nodes"] == nil {
		t.Fatalf("keys: %s", out)
	}
	var p struct {
		Placements []struct {
			Service string `json:"service"`
			Slot    int    `json:"slot"`
			Node    string `json:"node"`
		} `json:"placements"`
		Nodes []map[string]any `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Placements) != 11 {
		t.Errorf("%d placements, want 11", len(p.Placements))
	}
	for _, a := range p.Placements {
		if a.Service == "api" && a.Node != "edge-1" && a.Node != "edge-2" {
			t.Errorf("api on %s, which lacks tier=backend", a.Node)
		}
	}
	for _, k := range []string{"name", "cpu", "memory", "cpu_used", "memory_used"} {
		if _, ok := p.Nodes[0][k]; !ok {
			t.Errorf("node lacks %q: %v", k, p.Nodes[0])
		}
	}

	// The same nodes in another order give the same bytes.
	var nodes []any
	data, _ := os.ReadFile("../../examples/nodes.json")
	json.Unmarshal(data, &nodes)
	for i, j := 0, len(nodes)-1; i < j; i, j = i+1, j-1 {
		nodes[i], nodes[j] = nodes[j], nodes[i]
	}
	rev := filepath.Join(t.TempDir(), "nodes.json")
	b, _ := json.Marshal(nodes)
	os.WriteFile(rev, b, 0o644)
	if _, out2, _ := runCLI(t, "plan", "../../examples/fleet", "--nodes", rev, "-o", "json"); out2 != out {
		t.Error("node order changed the plan output")
	}

	code, out, _ = runCLI(t, "plan", "../../examples/fleet", "--nodes", "../../examples/nodes.json")
	if code != 0 || !strings.Contains(out, "SERVICE SLOTS") || !strings.Contains(out, "edge-4") {
		t.Errorf("text: %d %s", code, out)
	}
	// The largest share of each service, worked out here from the JSON
	// plan: web spreads by zone, the others by node.
	_, shares, _ := strings.Cut(out, "LARGEST SHARES\n")
	rows := strings.Split(strings.TrimSpace(shares), "\n")
	if len(rows) != 5 { // header and four services
		t.Fatalf("shares table:\n%s", shares)
	}
	zoneOf := map[string]string{}
	for _, n := range nodes {
		m := n.(map[string]any)
		zoneOf[m["name"].(string)] = m["labels"].(map[string]any)["zone"].(string)
	}
	perNode, perZone := map[string]map[string]int{}, map[string]map[string]int{}
	for _, a := range p.Placements {
		if perNode[a.Service] == nil {
			perNode[a.Service], perZone[a.Service] = map[string]int{}, map[string]int{}
		}
		perNode[a.Service][a.Node]++
		perZone[a.Service][zoneOf[a.Node]]++
	}
	most := func(m map[string]int) int {
		x := 0
		for _, c := range m {
			x = max(x, c)
		}
		return x
	}
	for _, row := range rows[1:] {
		f := strings.Fields(row)
		if len(f) != 8 {
			t.Fatalf("row %q", row)
		}
		if f[3] != strconv.Itoa(most(perNode[f[0]])) || perNode[f[0]][f[2]] != most(perNode[f[0]]) {
			t.Errorf("%s: largest node share %s %s, plan has %v", f[0], f[2], f[3], perNode[f[0]])
		}
		if f[0] == "web" && (f[6] != strconv.Itoa(most(perZone["web"])) || !strings.HasPrefix(f[5], "zone=")) {
			t.Errorf("web: largest zone share %s %s, plan has %v", f[5], f[6], perZone["web"])
		}
		if f[0] != "web" && f[5] != "-" {
			t.Errorf("%s spreads by node but shows %s", f[0], f[5])
		}
		if h, _ := strconv.Atoi(f[3]); func() bool { b, _ := strconv.Atoi(f[4]); return h > b }() {
			t.Errorf("%s: holds %s over its bound %s", f[0], f[3], f[4])
		}
	}
}

func TestPlanUnplacedAndBadInput(t *testing.T) {
	specs := writeTree(t, map[string]string{"big.yaml": "name: big\nimage: x\nreplicas: 3\nresources: {cpu: 3, memory: 1Gi}\n"})
	nodes := writeTree(t, map[string]string{
		"ok.json":      `[{"name":"n1","cpu":4,"memory":"8Gi"},{"name":"n2","cpu":4,"memory":"8Gi"}]`,
		"dup.json":     `[{"name":"n1","cpu":4,"memory":"8Gi"},{"name":"n1","cpu":4,"memory":"8Gi"}]`,
		"missing.json": `[{"name":"n1","memory":"8Gi"},{"cpu":1,"memory":"1Gi"}]`,
		"neg.json":     `[{"name":"n1","cpu":-1,"memory":"8Gi"}]`,
		"badmem.json":  `[{"name":"n1","cpu":1,"memory":"lots"}]`,
		"typo.json":    `[{"name":"n1","cpu":1,"memroy":"1Gi"}]`,
	})
	code, out, _ := runCLI(t, "plan", specs, "--nodes", filepath.Join(nodes, "ok.json"))
	if code != 2 || !strings.Contains(out, "big/2: insufficient cpu") {
		t.Errorf("unplaced: exit %d\n%s", code, out)
	}
	for file, want := range map[string]string{
		"dup.json":     `node "n1": duplicate name`,
		"missing.json": "missing cpu",
		"neg.json":     "negative cpu",
		"badmem.json":  `invalid size "lots"`,
		"typo.json":    `unknown field "memroy"`,
	} {
		code, _, errOut := runCLI(t, "plan", specs, "--nodes", filepath.Join(nodes, file))
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", file, code, errOut, want)
		}
	}
	if code, _, errOut := runCLI(t, "plan", specs); code != 1 || !strings.Contains(errOut, "--nodes") {
		t.Errorf("no nodes: %d %q", code, errOut)
	}
	bad := writeTree(t, map[string]string{"x.yaml": "name: x\nreplicas: [\n"})
	if code, _, _ := runCLI(t, "plan", bad, "--nodes", filepath.Join(nodes, "ok.json")); code != 1 {
		t.Errorf("invalid spec: exit %d", code)
	}
}

// TestPlanBase shows what a pull request moves, against another checkout
// and against a commit of the same repository.
func TestPlanBase(t *testing.T) {
	repo := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q", "-b", "main")
	specDir := filepath.Join(repo, "deploy")
	os.MkdirAll(specDir, 0o755)
	os.WriteFile(filepath.Join(specDir, "web.yaml"), []byte("name: web\nimage: x\nreplicas: 2\n"), 0o644)
	git("add", ".")
	git("commit", "-q", "-m", "two")
	os.WriteFile(filepath.Join(specDir, "web.yaml"), []byte("name: web\nimage: x\nreplicas: 3\n"), 0o644)
	nodes := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(nodes, []byte(`[{"name":"n1","cpu":4,"memory":"8Gi"},{"name":"n2","cpu":4,"memory":"8Gi"},{"name":"n3","cpu":4,"memory":"8Gi"}]`), 0o644)

	code, out, errOut := runCLI(t, "plan", specDir, "--nodes", nodes, "--base-rev", "HEAD", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var res struct {
		Diff struct {
			Added []map[string]any `json:"added"`
			Moved []map[string]any `json:"moved"`
		} `json:"diff"`
	}
	json.Unmarshal([]byte(out), &res)
	if len(res.Diff.Added) != 1 || res.Diff.Added[0]["slot"] != float64(2) || len(res.Diff.Moved) != 0 {
		t.Errorf("diff from HEAD: %s", out)
	}

	other := writeTree(t, map[string]string{"web.yaml": "name: web\nimage: x\nreplicas: 1\n"})
	code, out, _ = runCLI(t, "plan", specDir, "--nodes", nodes, "--base", other)
	if code != 0 || !strings.Contains(out, "+ web/1 on") || !strings.Contains(out, "+ web/2 on") {
		t.Errorf("diff from checkout: %s", out)
	}
	if code, _, errOut := runCLI(t, "plan", specDir, "--nodes", nodes, "--base-rev", "nope"); code != 1 || !strings.Contains(errOut, `resolve revision "nope"`) {
		t.Errorf("bad rev: %d %q", code, errOut)
	}
}
