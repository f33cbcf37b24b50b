package placement_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestFence keeps placement pure. Its own imports are limited to an allow
// list (time is there for the time.Time type of a cron tick; the package
// never reads the clock), and nothing it pulls in, however indirectly, may
// touch containers, Git, gossip or DNS.
func TestFence(t *testing.T) {
	goList := func(args ...string) []string {
		out, err := exec.Command("go", append([]string{"list"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list: %v\n%s", err, out)
		}
		return strings.Fields(strings.Trim(strings.TrimSpace(string(out)), "[]"))
	}
	allowed := map[string]bool{"math": true, "sort": true, "time": true, "github.com/shoal-run/shoal": true}
	for _, imp := range goList("-f", "{{.Imports}}", "github.com/shoal-run/shoal/placement") {
		if !allowed[imp] {
			t.Errorf("placement imports %s", imp)
		}
	}
	for _, dep := range goList("-deps", "github.com/shoal-run/shoal/placement") {
		for _, f := range []string{"github.com/containerd/", "github.com/go-git/", "github.com/hashicorp/", "github.com/miekg/"} {
			if strings.HasPrefix(dep, f) {
				t.Errorf("placement depends on %s", dep)
			}
		}
	}
}
