package gitsync_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/gitsync/gittest"
)

// TestFigures measures the numbers quoted in the package's note. It runs
// only with SHOAL_FIGURES=1 (and is meant to run without -race):
//
//	SHOAL_FIGURES=1 go test -run TestFigures -v ./gitsync/
func TestFigures(t *testing.T) {
	if os.Getenv("SHOAL_FIGURES") == "" {
		t.Skip("set SHOAL_FIGURES=1 to measure")
	}
	t.Run("webhook_to_revision", figureWebhook)
	t.Run("idle_poll", figureIdlePoll)
	t.Run("clone_1000_files", figureClone)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(p*float64(len(s)-1))]
}

func figureWebhook(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL})
	h.expect(c)
	hook := httptest.NewServer(h.s.WebhookHandler("k"))
	defer hook.Close()
	var lat []time.Duration
	for i := 0; i < 50; i++ {
		c = r.Commit(fmt.Sprintf("push %d", i), map[string]string{"web.yaml": fmt.Sprintf("name: web\nimage: web:%d\n", i)})
		body := []byte(`{"ref":"refs/heads/main","after":"` + c + `"}`)
		req, _ := http.NewRequest(http.MethodPost, hook.URL, bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", gitsync.SignWebhook("k", body))
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h.expect(c)
		lat = append(lat, time.Since(t0))
	}
	t.Logf("FIGURE webhook->Revision over %d pushes (HTTP, loopback): p50 %v, p90 %v, max %v",
		len(lat), percentile(lat, 0.5).Round(time.Microsecond), percentile(lat, 0.9).Round(time.Microsecond), percentile(lat, 1).Round(time.Microsecond))
}

func figureIdlePoll(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL})
	h.expect(c)
	const n = 50
	req0, bytes0 := srv.Requests(), srv.BytesOut()
	var lat []time.Duration
	for i := 0; i < n; i++ {
		before := h.s.Status().LastFetch
		t0 := time.Now()
		h.s.Trigger()
		if !poll(func() bool { return h.s.Status().LastFetch.After(before) }) {
			t.Fatal("no poll")
		}
		lat = append(lat, time.Since(t0))
	}
	h.noRevision()
	reqs := float64(srv.Requests()-req0) / n
	out := float64(srv.BytesOut()-bytes0) / n
	t.Logf("FIGURE idle poll (HTTP, loopback, git http-backend): p50 %v, p90 %v; %.1f requests and %.0f response bytes per poll",
		percentile(lat, 0.5).Round(time.Microsecond), percentile(lat, 0.9).Round(time.Microsecond), reqs, out)
	var cli []time.Duration
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		if out, err := exec.Command("git", "ls-remote", srv.RepoURL, "refs/heads/main").CombinedOutput(); err != nil {
			t.Fatalf("git ls-remote: %v: %s", err, out)
		}
		cli = append(cli, time.Since(t0))
	}
	t.Logf("FIGURE baseline git ls-remote against the same server: p50 %v (idle poll / ls-remote = %.2f)",
		percentile(cli, 0.5).Round(time.Microsecond), float64(percentile(lat, 0.5))/float64(percentile(cli, 0.5)))

	// The same over file:// (go-git runs git-upload-pack).
	fr := gittest.New(t)
	c = fr.Commit("one", map[string]string{"billing.yaml": billingYAML})
	fh := start(t, gitsync.Config{URL: fr.URL()})
	fh.expect(c)
	lat = lat[:0]
	for i := 0; i < n; i++ {
		before := fh.s.Status().LastFetch
		t0 := time.Now()
		fh.s.Trigger()
		if !poll(func() bool { return fh.s.Status().LastFetch.After(before) }) {
			t.Fatal("no poll")
		}
		lat = append(lat, time.Since(t0))
	}
	t.Logf("FIGURE idle poll (file://): p50 %v, p90 %v", percentile(lat, 0.5).Round(time.Microsecond), percentile(lat, 0.9).Round(time.Microsecond))
}

func figureClone(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	files := make(map[string]string, 1000)
	for i := 0; i < 1000; i++ {
		files[fmt.Sprintf("services/%02d/svc-%04d.yaml", i/100, i)] = fmt.Sprintf(
			"name: svc-%04d\nimage: registry.example.com/svc:%d\nreplicas: %d\nports:\n  - port: %d\nenv:\n  ID: \"%d\"\n",
			i, i%7, 1+i%5, 10000+i, i)
	}
	c := r.Commit("1000 services", files)
	size := r.Git("count-objects", "-vH")
	t.Logf("remote: %s", strings.ReplaceAll(size, "\n", ", "))

	// go-git bare clone over HTTP, as the syncer does it, vs the git CLI.
	var goGit, cli []time.Duration
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		t0 := time.Now()
		if _, err := git.PlainCloneContext(context.Background(), filepath.Join(dir, "a.git"), true, &git.CloneOptions{URL: srv.RepoURL, Tags: git.NoTags, SingleBranch: true}); err != nil {
			t.Fatal(err)
		}
		goGit = append(goGit, time.Since(t0))
		t0 = time.Now()
		if out, err := exec.Command("git", "clone", "-q", "--bare", "--single-branch", srv.RepoURL, filepath.Join(dir, "b.git")).CombinedOutput(); err != nil {
			t.Fatalf("git clone: %v: %s", err, out)
		}
		cli = append(cli, time.Since(t0))
	}
	g, k := percentile(goGit, 0.5), percentile(cli, 0.5)
	t.Logf("FIGURE clone of 1,000 spec files over HTTP: go-git %v, git CLI %v (ratio %.2f)", g.Round(time.Millisecond), k.Round(time.Millisecond), float64(g)/float64(k))

	// End to end: empty data dir to the first Revision (clone, read 1,000
	// files from Git objects, validate with CUE, save).
	t0 := time.Now()
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data})
	rev := h.expect(c)
	t.Logf("FIGURE start to first Revision with 1,000 services: %v (%d services)", time.Since(t0).Round(time.Millisecond), len(rev.Spec.Services))

	// Reading the tree from the syncer's clone (packed objects, pack files
	// kept open as the syncer does) vs from a checkout on disk.
	h.stop()
	st := filesystem.NewStorageWithOptions(osfs.New(filepath.Join(data, "repo.git")), cache.NewObjectLRUDefault(), filesystem.Options{MaxOpenDescriptors: 16})
	defer st.Close()
	repo, err := git.Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	commit, err := repo.CommitObject(plumbing.NewHash(c))
	if err != nil {
		t.Fatal(err)
	}
	tree, err := commit.Tree()
	if err != nil {
		t.Fatal(err)
	}
	fsys := gitsync.TreeFS(tree)
	var fromGit, fromDisk []time.Duration
	for i := 0; i < 3; i++ {
		t0 = time.Now()
		if _, err := shoal.LoadSpec(fsys, "."); err != nil {
			t.Fatal(err)
		}
		fromGit = append(fromGit, time.Since(t0))
		t0 = time.Now()
		if _, err := shoal.LoadSpec(os.DirFS(r.Work), "services"); err != nil {
			t.Fatal(err)
		}
		fromDisk = append(fromDisk, time.Since(t0))
	}
	g, k = percentile(fromGit, 0.5), percentile(fromDisk, 0.5)
	t.Logf("FIGURE LoadSpec of 1,000 files: from Git objects %v, from a checkout %v (ratio %.2f)", g.Round(time.Millisecond), k.Round(time.Millisecond), float64(g)/float64(k))
}
