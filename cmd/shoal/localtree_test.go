package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestValidatePlanLocalTreeConfined: validate and plan on a local tree (a
// pull request in CI) read only the tree's regular files. A link to a
// secret outside is an error that does not print the secret; a FIFO and a
// device are errors, and neither hangs nor reads forever.
func TestValidatePlanLocalTreeConfined(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret.yaml")
	if err := os.WriteFile(secret, []byte("name: TOPSECRETVALUE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes := writeTree(t, map[string]string{"nodes.json": `[{"name":"n1","cpu":4,"memory":"8Gi"}]`})
	for _, tc := range []struct {
		name string
		make func(p string) error
		want string
	}{
		{"symlink-out", func(p string) error { return os.Symlink(secret, p) }, "escapes"},
		{"dev-zero-link", func(p string) error { return os.Symlink("/dev/zero", p) }, "escapes"},
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "not a regular file"},
		{"device", func(p string) error { return syscall.Mknod(p, syscall.S_IFCHR|0o600, 1<<8|5) }, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeTree(t, map[string]string{"web.yaml": "name: web\nimage: x/web:1\n"})
			bad := filepath.Join(dir, "bad.yaml")
			if err := tc.make(bad); err != nil {
				t.Skipf("cannot make %s here: %v", tc.name, err)
			}
			type result struct {
				code           int
				stdout, stderr string
			}
			for _, args := range [][]string{
				{"validate", dir},
				{"plan", dir, "--nodes", filepath.Join(nodes, "nodes.json")},
			} {
				done := make(chan result, 1)
				go func() {
					code, out, errOut := runCLI(t, args...)
					done <- result{code, out, errOut}
				}()
				var r result
				select {
				case r = <-done:
				case <-time.After(30 * time.Second):
					t.Fatalf("%s hangs on %s", args[0], tc.name)
				}
				all := r.stdout + r.stderr
				if r.code == 0 || !strings.Contains(all, bad) || !strings.Contains(all, tc.want) {
					t.Errorf("%s: exit %d, want an error on %s saying %q:\n%s", args[0], r.code, bad, tc.want, all)
				}
				if strings.Contains(all, "TOPSECRETVALUE") {
					t.Errorf("%s prints the content of the link's target:\n%s", args[0], all)
				}
			}
		})
	}
}
