package node_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestFence keeps node pure: its own imports are an allow list (time for
// the time.Time values it is handed; it never reads the clock), and nothing
// it pulls in may touch containers, Git, gossip or DNS.
func TestFence(t *testing.T) {
	goList := func(args ...string) []string {
		out, err := exec.Command("go", append([]string{"list"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return strings.Fields(strings.Trim(strings.TrimSpace(string(out)), "[]"))
	}
	allowed := map[string]bool{"sort": true, "strings": true, "time": true, "github.com/robfig/cron/v3": true,
		"github.com/shoal-run/shoal": true, "github.com/shoal-run/shoal/placement": true}
	for _, imp := range goList("-f", "{{.Imports}}", "github.com/shoal-run/shoal/node") {
		if !allowed[imp] {
			t.Errorf("node imports %s", imp)
		}
	}
	for _, dep := range goList("-deps", "github.com/shoal-run/shoal/node") {
		for _, f := range []string{"github.com/containerd/", "github.com/go-git/", "github.com/hashicorp/", "github.com/miekg/"} {
			if strings.HasPrefix(dep, f) {
				t.Errorf("node depends on %s", dep)
			}
		}
	}
}
