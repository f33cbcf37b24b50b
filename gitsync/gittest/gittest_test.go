package gittest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-run/shoal/gitsync/gittest"
)

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=a", "GIT_AUTHOR_EMAIL=a@x", "GIT_COMMITTER_NAME=a", "GIT_COMMITTER_EMAIL=a@x", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestServePushAndFetch: the HTTP server serves clones and takes pushes,
// and Down makes it unreachable.
func TestServePushAndFetch(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"a.yaml": "name: a\n"})
	srv := r.Serve()
	dir := t.TempDir()
	clone := filepath.Join(dir, "c")
	git(t, dir, "clone", "-q", srv.RepoURL, clone)
	if got := git(t, clone, "rev-parse", "HEAD"); got != c1 {
		t.Fatalf("cloned %s, want %s", got, c1)
	}
	if err := os.WriteFile(filepath.Join(clone, "b.yaml"), []byte("name: b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, clone, "add", "-A")
	git(t, clone, "commit", "-q", "-m", "two")
	git(t, clone, "push", "-q", "origin", "main")
	c2 := git(t, clone, "rev-parse", "HEAD")
	if got := git(t, r.Bare, "rev-parse", "main"); got != c2 {
		t.Fatalf("remote main %s after push, want %s", got, c2)
	}
	srv.Down(true)
	cmd := exec.Command("git", "ls-remote", srv.RepoURL)
	if err := cmd.Run(); err == nil {
		t.Fatal("ls-remote worked while down")
	}
	srv.Down(false)
	if out := git(t, dir, "ls-remote", srv.RepoURL, "refs/heads/main"); !strings.HasPrefix(out, c2) {
		t.Fatalf("ls-remote: %s", out)
	}
}

func TestSigningKeys(t *testing.T) {
	r := gittest.New(t)
	pgp := gittest.NewOpenPGPKey(t, "p@x")
	ssh := gittest.NewSSHKey(t, "s@x")
	c1 := r.Commit("pgp", nil, gittest.SignedBy(pgp))
	c2 := r.Commit("ssh", nil, gittest.SignedBy(ssh))
	if raw := r.Git("cat-file", "commit", c1); !strings.Contains(raw, "BEGIN PGP SIGNATURE") {
		t.Errorf("pgp commit:\n%s", raw)
	}
	if raw := r.Git("cat-file", "commit", c2); !strings.Contains(raw, "BEGIN SSH SIGNATURE") {
		t.Errorf("ssh commit:\n%s", raw)
	}
	if !strings.Contains(pgp.Armored, "BEGIN PGP PUBLIC KEY BLOCK") || len(pgp.Fingerprint) != 40 {
		t.Errorf("pgp key: %q %q", pgp.Fingerprint, pgp.Armored)
	}
	if !strings.HasPrefix(ssh.AllowedSigner(), `s@x namespaces="git" ssh-ed25519 `) {
		t.Errorf("allowed signer line %q", ssh.AllowedSigner())
	}
}
