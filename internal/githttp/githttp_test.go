package githttp_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/internal/githttp"
)

func commit(t *testing.T, repo *git.Repository, dir, name, content string) string {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wt.Add(name); err != nil {
		t.Fatal(err)
	}
	h, err := wt.Commit("change "+name, &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@example.com", When: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// A Syncer follows a repository served by Handler, and sees a new commit
// on the next fetch; the git CLI can clone it too.
func TestServeFollowsCommits(t *testing.T) {
	dir := t.TempDir()
	repo, err := git.PlainInit(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.Storer.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, plumbing.NewBranchReferenceName("main"))); err != nil {
		t.Fatal(err)
	}
	first := commit(t, repo, dir, "a.txt", "one\n")
	srv := httptest.NewServer(githttp.Handler(filepath.Join(dir, ".git"), nil))
	defer srv.Close()

	revs := make(chan *shoal.Revision, 4)
	s, err := gitsync.New(gitsync.Config{
		URL: srv.URL + "/fleet.git", DataDir: t.TempDir(), PollInterval: time.Hour,
		OnRevision: func(r *shoal.Revision) { revs <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	defer s.Close()
	wait := func(want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case r := <-revs:
				if r.Commit == want {
					return
				}
			case <-deadline:
				t.Fatalf("revision %s never arrived; status %+v", want, s.Status())
			}
		}
	}
	wait(first)
	second := commit(t, repo, dir, "b.txt", "two\n")
	s.Trigger()
	wait(second)

	if _, err := exec.LookPath("git"); err == nil {
		out, err := exec.Command("git", "clone", "-q", srv.URL+"/fleet.git", filepath.Join(t.TempDir(), "c")).CombinedOutput()
		if err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
	}
}

func TestRefusesWhatItDoesNotServe(t *testing.T) {
	dir := t.TempDir()
	if _, err := git.PlainInit(dir, false); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(githttp.Handler(filepath.Join(dir, ".git"), nil))
	defer srv.Close()
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/x.git/info/refs?service=git-receive-pack", http.StatusForbidden},
		{"POST", "/x.git/git-receive-pack", http.StatusNotFound},
		{"POST", "/x.git/git-upload-pack", http.StatusBadRequest},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader("garbage"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
		}
	}
}
