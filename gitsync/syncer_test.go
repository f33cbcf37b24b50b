package gitsync_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/gitsync/gittest"
)

const (
	billingYAML = "name: billing\nimage: registry.example.com/billing:1.4\nreplicas: 5\nports:\n  - port: 80\n"
	webYAML     = "name: web\nimage: registry.example.com/web:2\nreplicas: 2\n"
	badYAML     = "name: web\nimage: web:1\nreplicas: \"many\"\n"
	// wait bounds every condition poll; generous for -race on a busy box.
	wait = 20 * time.Second
)

// harness runs one Syncer and collects what it emits and logs.
type harness struct {
	t    *testing.T
	s    *gitsync.Syncer
	revs chan *shoal.Revision
	logs *logBuffer
	errc chan error
}

type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// start makes and runs a Syncer; cfg.DataDir defaults to a temp dir and
// PollInterval to one hour (tests trigger explicitly unless they poll).
func start(t *testing.T, cfg gitsync.Config) *harness {
	t.Helper()
	h := &harness{t: t, revs: make(chan *shoal.Revision, 200), logs: &logBuffer{}, errc: make(chan error, 1)}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = time.Hour
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 20 * time.Millisecond
		cfg.MaxBackoff = 200 * time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(h.logs, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.OnRevision = func(r *shoal.Revision) { h.revs <- r }
	s, err := gitsync.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.s = s
	go func() { h.errc <- s.Run(context.Background()) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.t.Helper()
	if err := h.s.Close(); err != nil {
		h.t.Errorf("close: %v", err)
	}
	select {
	case err := <-h.errc:
		if err != nil {
			h.t.Errorf("run: %v", err)
		}
		h.errc <- nil // let a second stop pass
	case <-time.After(wait):
		h.t.Error("run did not return after close")
	}
}

// next waits for the next emitted revision.
func (h *harness) next() *shoal.Revision {
	h.t.Helper()
	select {
	case r := <-h.revs:
		return r
	case <-time.After(wait):
		h.t.Fatalf("no revision within %v; status %+v", wait, h.s.Status())
		return nil
	}
}

// expect waits for the next revision and checks its commit.
func (h *harness) expect(commit string) *shoal.Revision {
	h.t.Helper()
	r := h.next()
	if r.Commit != commit {
		h.t.Fatalf("revision %s, want %s", r.Short(), commit[:12])
	}
	if cur := h.s.Current(); cur == nil || cur.Commit != commit {
		h.t.Fatalf("current = %v, want %s", cur, commit[:12])
	}
	return r
}

// noRevision checks that nothing was emitted so far.
func (h *harness) noRevision() {
	h.t.Helper()
	select {
	case r := <-h.revs:
		h.t.Fatalf("unexpected revision %s", r.Short())
	default:
	}
}

// waitError waits until the status carries an error about what and commit.
func (h *harness) waitError(what, commit string) *gitsync.SyncError {
	h.t.Helper()
	var st gitsync.Status
	ok := poll(func() bool {
		st = h.s.Status()
		return st.Error != nil && st.Error.What == what && (commit == "" || st.Error.Commit == commit)
	})
	if !ok {
		h.t.Fatalf("no %s error for %q within %v; status %+v, error %+v", what, commit, wait, st, st.Error)
	}
	return st.Error
}

// poll checks cond every few milliseconds until it holds or wait passes.
func poll(cond func() bool) bool {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// within reports whether cond holds at some check before d passes.
func within(d time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestFirstClone(t *testing.T) {
	for _, transport := range []string{"file", "http"} {
		t.Run(transport, func(t *testing.T) {
			r := gittest.New(t)
			c1 := r.Commit("add billing", map[string]string{"billing.yaml": billingYAML, "README.md": "# specs\n"})
			url := r.URL()
			if transport == "http" {
				url = r.Serve().RepoURL
			}
			data := t.TempDir()
			h := start(t, gitsync.Config{URL: url, DataDir: data})
			rev := h.expect(c1)
			if rev.Message != "add billing" || !strings.Contains(rev.Author, "test@shoal.invalid") || rev.Time.IsZero() {
				t.Errorf("revision metadata: %+v", rev)
			}
			svc := rev.Spec.Service("billing")
			if svc == nil || svc.Replicas != 5 || len(svc.Ports) != 1 || svc.Ports[0].Port != 80 {
				t.Fatalf("spec: %+v", rev.Spec)
			}
			if rev.SpecHash == "" || rev.SpecHash != rev.Spec.Hash || rev.Signer != "" {
				t.Errorf("spec hash %q vs %q, signer %q", rev.SpecHash, rev.Spec.Hash, rev.Signer)
			}
			st := h.s.Status()
			if st.Commit != c1 || st.Head != c1 || st.LastFetch.IsZero() || st.Error != nil || st.Verified || st.VerifyRequired || st.Restored {
				t.Errorf("status: %+v", st)
			}
			// A bare clone: no worktree, objects at the top of repo.git.
			if _, err := os.Stat(filepath.Join(data, "repo.git", "objects")); err != nil {
				t.Errorf("bare clone: %v", err)
			}
			if _, err := os.Stat(filepath.Join(data, "repo.git", "billing.yaml")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("clone has a worktree: %v", err)
			}
			// Saved once handed over (OnRevision returned), not before.
			if !poll(func() bool { _, err := os.Stat(filepath.Join(data, "last-good.json")); return err == nil }) {
				t.Errorf("last good revision not saved")
			}
			if logs := h.logs.String(); !strings.Contains(logs, "cloning spec repository") || !strings.Contains(logs, "cloned spec repository") {
				t.Errorf("clone not logged:\n%s", logs)
			}
			if transport == "http" && !strings.Contains(h.logs.String(), "progress=") {
				t.Errorf("clone progress not logged:\n%s", h.logs.String())
			}
		})
	}
}

func TestPollSeesNewCommit(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: r.URL(), PollInterval: 30 * time.Millisecond})
	h.expect(c1)
	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	rev := h.expect(c2)
	if len(rev.Spec.Services) != 2 {
		t.Fatalf("services: %+v", rev.Spec.Services)
	}
	// Polls of an unchanged head emit nothing new.
	before := h.s.Status().LastFetch
	if !poll(func() bool { return h.s.Status().LastFetch.After(before) }) {
		t.Fatal("no further poll")
	}
	h.noRevision()
}

func TestWebhook(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	pushes := make(chan string, 10)
	h := start(t, gitsync.Config{URL: srv.RepoURL, OnPush: func(c string) { pushes <- c }})
	h.expect(c1)
	const secret = "s3cret"
	hook := httptest.NewServer(h.s.WebhookHandler(secret))
	defer hook.Close()

	post := func(body, sig, event string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, hook.URL, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if sig != "" {
			req.Header.Set("X-Hub-Signature-256", sig)
		}
		if event != "" {
			req.Header.Set("X-GitHub-Event", event)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	body := fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, c2)
	requests := srv.Requests()
	for _, tc := range []struct {
		name, body, sig string
	}{
		{"unsigned", body, ""},
		{"wrong secret", body, gitsync.SignWebhook("other", []byte(body))},
		{"signature of another body", body, gitsync.SignWebhook(secret, []byte(body+" "))},
		{"sha1 style", body, "sha1=" + strings.TrimPrefix(gitsync.SignWebhook(secret, []byte(body)), "sha256=")[:40]},
		{"not hex", body, "sha256=zz"},
	} {
		if code := post(tc.body, tc.sig, "push"); code != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401", tc.name, code)
		}
	}
	resp, err := http.Get(hook.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: status %d, want 405", resp.StatusCode)
	}
	if code := post("{}", gitsync.SignWebhook(secret, []byte("{}")), "ping"); code != http.StatusOK {
		t.Errorf("ping: status %d, want 200", code)
	}
	if srv.Requests() != requests {
		t.Fatalf("refused webhooks reached the remote: %d requests, want %d", srv.Requests(), requests)
	}
	h.noRevision()

	start := time.Now()
	if code := post(body, gitsync.SignWebhook(secret, []byte(body)), "push"); code != http.StatusAccepted {
		t.Fatalf("signed push: status %d, want 202", code)
	}
	h.expect(c2)
	took := time.Since(start)
	t.Logf("webhook to revision: %v", took)
	// Only the signed push on the tracked branch is relayed, once.
	if len(pushes) != 1 || <-pushes != c2 {
		t.Errorf("OnPush: want exactly %s", c2)
	}
	// The issue asks for a fetch within 100 ms; the whole round trip
	// (fetch, CUE validation, save) is allowed more under -race.
	if took > 2*time.Second {
		t.Errorf("webhook to revision took %v", took)
	}

	// A push to another branch is acknowledged and ignored.
	other := `{"ref":"refs/heads/feature","after":"` + strings.Repeat("a", 40) + `"}`
	if code := post(other, gitsync.SignWebhook(secret, []byte(other)), "push"); code != http.StatusAccepted {
		t.Errorf("other branch: status %d, want 202", code)
	}
	if len(pushes) != 0 {
		t.Errorf("a push to another branch was relayed: %s", <-pushes)
	}

	// An empty secret refuses everything.
	empty := httptest.NewServer(h.s.WebhookHandler(""))
	defer empty.Close()
	req, _ := http.NewRequest(http.MethodPost, empty.URL, strings.NewReader("{}"))
	req.Header.Set("X-Hub-Signature-256", gitsync.SignWebhook("", []byte("{}")))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("empty secret: status %d, want 401", resp.StatusCode)
	}
}

// TestWebhookFetchWithin100ms measures from sending the webhook to the first
// request reaching the remote (to within the 5 ms polling step).
func TestWebhookFetchWithin100ms(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL})
	h.expect(c1)
	hook := httptest.NewServer(h.s.WebhookHandler("k"))
	defer hook.Close()
	var best time.Duration = time.Hour
	for i := 0; i < 3; i++ { // best of three: a loaded CI box may stall one
		c := r.Commit(fmt.Sprintf("c%d", i), map[string]string{"n.yaml": fmt.Sprintf("name: n\nimage: n:%d\n", i)})
		before := srv.Requests()
		body := []byte(`{"ref":"refs/heads/main","after":"` + c + `"}`)
		req, _ := http.NewRequest(http.MethodPost, hook.URL, bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", gitsync.SignWebhook("k", body))
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if !poll(func() bool { return srv.Requests() > before }) {
			t.Fatal("webhook did not reach the remote")
		}
		best = min(best, time.Since(t0))
		h.expect(c)
	}
	t.Logf("webhook accepted to first request at the remote: %v", best)
	if best > 100*time.Millisecond {
		t.Errorf("fetch started %v after the webhook, want within 100 ms", best)
	}
}

func TestAnnounce(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, AnnounceAttempts: 50, AnnounceInterval: 10 * time.Millisecond})
	h.expect(c1)

	// A peer announces a commit the remote does not serve yet (a lagging
	// mirror): the syncer keeps fetching until it shows up.
	c2 := r.CommitUnpushed("two", map[string]string{"web.yaml": webYAML})
	before := srv.Requests()
	h.s.Announce(c2)
	if !poll(func() bool { return srv.Requests() >= before+4 }) { // four fetch rounds, one request each
		t.Fatal("announce did not fetch")
	}
	h.noRevision()
	r.Push(false)
	h.expect(c2)

	// Announcing what is in force costs nothing. A fetch would start
	// within the announce interval (10 ms) and take a few: none may come
	// within fifty times that.
	before = srv.Requests()
	h.s.Announce(strings.ToUpper(c2))
	h.s.Announce("not-a-hash")
	if within(500*time.Millisecond, func() bool { return srv.Requests() != before }) {
		t.Errorf("announce of the current commit fetched: %d requests", srv.Requests()-before)
	}
	// The syncer still fetches when asked: one request for one trigger.
	last := h.s.Status().LastFetch
	h.s.Trigger()
	if !poll(func() bool { return h.s.Status().LastFetch.After(last) }) {
		t.Fatal("trigger did not fetch")
	}
	if got := srv.Requests() - before; got != 1 {
		t.Errorf("%d requests for one idle fetch, want 1", got)
	}
}

func TestAnnounceGivesUp(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL, AnnounceAttempts: 3, AnnounceInterval: 10 * time.Millisecond})
	h.expect(c1)
	n0 := srv.Requests()
	h.s.Announce(strings.Repeat("ab", 20))
	if !poll(func() bool { return strings.Contains(h.logs.String(), "giving up") }) {
		t.Fatal("announce of a missing commit did not give up")
	}
	// One idle fetch (one request: the ref advertisement) per attempt.
	if got := srv.Requests() - n0; got != 3 {
		t.Errorf("%d requests for 3 announce attempts, want 3", got)
	}
	// Nothing more is retried: a trigger costs exactly one more request.
	n := srv.Requests()
	last := h.s.Status().LastFetch
	h.s.Trigger()
	if !poll(func() bool { return h.s.Status().LastFetch.After(last) }) {
		t.Fatal("trigger after give-up did not fetch")
	}
	if got := srv.Requests() - n; got != 1 {
		t.Errorf("%d requests for one idle fetch, want 1", got)
	}
	if st := h.s.Status(); st.Error != nil || st.Commit != c1 {
		t.Errorf("status after give-up: %+v", st)
	}
}

func TestInvalidSpecKeepsPrevious(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("good", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: r.URL(), PollInterval: 30 * time.Millisecond})
	h.expect(c1)
	c2 := r.Commit("bad", map[string]string{"web.yaml": badYAML})
	e := h.waitError(gitsync.ErrorValidate, c2)
	if len(e.Fields) == 0 || e.Fields[0].File != "web.yaml" || e.Fields[0].Line != 3 || !strings.Contains(e.Message, "replicas") {
		t.Errorf("validation error: %+v", e)
	}
	if e.Since.IsZero() {
		t.Error("error has no time")
	}
	h.noRevision()
	if cur := h.s.Current(); cur.Commit != c1 {
		t.Fatalf("current %s, want %s", cur.Short(), c1)
	}
	if st := h.s.Status(); st.Refused == nil || st.Refused.Commit != c2 {
		t.Errorf("refused: %+v", st.Refused)
	}
	// Polling the same bad head keeps the error and its first time.
	since := e.Since
	last := h.s.Status().LastFetch
	if !poll(func() bool { return h.s.Status().LastFetch.After(last) }) {
		t.Fatal("no further poll")
	}
	if st := h.s.Status(); st.Error == nil || !st.Error.Since.Equal(since) {
		t.Errorf("error after a re-poll: %+v", st.Error)
	}
	// Reverting the branch to the revision in force clears the error and
	// emits nothing new.
	r.Reset(c1)
	if !poll(func() bool { st := h.s.Status(); return st.Error == nil && st.Head == c1 }) {
		t.Fatalf("revert not seen: %+v", h.s.Status())
	}
	h.noRevision()
	c3 := r.Commit("fixed", map[string]string{"web.yaml": webYAML})
	h.expect(c3)
	if st := h.s.Status(); st.Error != nil {
		t.Errorf("error not cleared: %+v", st.Error)
	}
}

func TestRemoteDownThenBack(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	h := start(t, gitsync.Config{URL: srv.RepoURL, PollInterval: 50 * time.Millisecond})
	h.expect(c1)
	srv.Down(true)
	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	e := h.waitError(gitsync.ErrorFetch, "")
	if e.Since.IsZero() || e.Message == "" {
		t.Errorf("fetch error: %+v", e)
	}
	// Retries continue with backoff while the remote is down.
	if !poll(func() bool { st := h.s.Status(); return st.Error != nil && st.Error.Attempts >= 3 }) {
		t.Fatalf("no retries: %+v", h.s.Status().Error)
	}
	h.noRevision()
	if cur := h.s.Current(); cur.Commit != c1 {
		t.Fatalf("current %s, want %s", cur.Short(), c1)
	}
	srv.Down(false)
	h.expect(c2)
	if st := h.s.Status(); st.Error != nil {
		t.Errorf("error not cleared: %+v", st.Error)
	}
}

// TestStatusClock: status times come from the injected clock, and a
// refused head stays visible while the remote is down.
func TestStatusClock(t *testing.T) {
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("good", map[string]string{"billing.yaml": billingYAML})
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	h := start(t, gitsync.Config{URL: srv.RepoURL, Now: func() time.Time { return t0 }})
	h.expect(c1)
	c2 := r.Commit("bad", map[string]string{"web.yaml": badYAML})
	h.s.Trigger()
	e := h.waitError(gitsync.ErrorValidate, c2)
	if !e.Since.Equal(t0) {
		t.Errorf("since %v, want %v", e.Since, t0)
	}
	srv.Down(true)
	h.s.Trigger()
	h.waitError(gitsync.ErrorFetch, "")
	st := h.s.Status()
	if st.Refused == nil || st.Refused.What != gitsync.ErrorValidate || st.Refused.Commit != c2 || len(st.Refused.Fields) == 0 {
		t.Errorf("refused head hidden while the remote is down: %+v", st.Refused)
	}
	if !st.LastFetch.Equal(t0) || !st.LastAttempt.Equal(t0) || !st.Error.Since.Equal(t0) {
		t.Errorf("status times: %+v", st)
	}
	h.noRevision()
}

func TestRestartRestoresLastGood(t *testing.T) {
	for _, lost := range []bool{false, true} {
		t.Run(fmt.Sprintf("clone_lost=%v", lost), func(t *testing.T) {
			r := gittest.New(t)
			srv := r.Serve()
			c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
			data := t.TempDir()
			h := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data})
			want := h.expect(c1)
			h.stop()

			srv.Close() // the remote is gone for good
			if lost {
				if err := os.RemoveAll(filepath.Join(data, "repo.git")); err != nil {
					t.Fatal(err)
				}
			}
			h2 := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data})
			got := h2.expect(c1)
			if got.SpecHash != want.SpecHash || got.Spec.Hash != want.Spec.Hash || got.Spec.Service("billing").Replicas != 5 {
				t.Errorf("restored %+v, want %+v", got, want)
			}
			if st := h2.s.Status(); !st.Restored || st.Commit != c1 {
				t.Errorf("status: %+v", st)
			}
			h2.waitError(gitsync.ErrorFetch, "")
			h2.noRevision()
		})
	}
}

// TestRestoreHonoursPolicy: a revision saved without verification is not
// restored once trusted keys are configured; a verified one is.
func TestRestoreHonoursPolicy(t *testing.T) {
	key := gittest.NewSSHKey(t, "release@shoal.invalid")
	r := gittest.New(t)
	srv := r.Serve()
	c1 := r.Commit("unsigned", map[string]string{"billing.yaml": billingYAML})
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data})
	h.expect(c1)
	h.stop()
	srv.Down(true)
	h2 := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data, AllowedSigners: key.AllowedSigner()})
	h2.waitError(gitsync.ErrorFetch, "")
	h2.noRevision()
	if h2.s.Current() != nil {
		t.Fatal("unverified revision restored under a signature policy")
	}
	h2.stop()

	srv.Down(false)
	c2 := r.Commit("signed", map[string]string{"web.yaml": webYAML}, gittest.SignedBy(key))
	h3 := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data, AllowedSigners: key.AllowedSigner()})
	h3.expect(c2)
	h3.stop()
	srv.Down(true)
	h4 := start(t, gitsync.Config{URL: srv.RepoURL, DataDir: data, AllowedSigners: key.AllowedSigner()})
	if rev := h4.expect(c2); !strings.HasPrefix(rev.Signer, "ssh release@shoal.invalid") {
		t.Errorf("restored signer %q", rev.Signer)
	}
	if st := h4.s.Status(); !st.Verified || !st.Restored {
		t.Errorf("status %+v", st)
	}
}

func TestForcePush(t *testing.T) {
	t.Run("followed", func(t *testing.T) {
		r := gittest.New(t)
		c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
		h := start(t, gitsync.Config{URL: r.URL()})
		h.expect(c1)
		c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
		h.s.Trigger()
		h.expect(c2)

		// Rewind: main goes back to c1.
		r.Reset(c1)
		h.s.Trigger()
		h.expect(c1)
		if !strings.Contains(h.logs.String(), "FORCE-PUSH") {
			t.Error("force-push not logged")
		}
		// Diverge: a different commit replaces c2's place.
		c3 := r.Commit("three", map[string]string{"other.yaml": strings.ReplaceAll(webYAML, "web", "other")})
		r.Reset(c1)
		c4 := r.Commit("four", map[string]string{"web.yaml": webYAML + "env:\n  A: b\n"})
		_ = c3
		h.s.Trigger()
		h.expect(c4)
		if st := h.s.Status(); st.Error != nil {
			t.Errorf("status error: %+v", st.Error)
		}
	})
	t.Run("refused", func(t *testing.T) {
		r := gittest.New(t)
		c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
		h := start(t, gitsync.Config{URL: r.URL(), RefuseNonFastForward: true})
		h.expect(c1)
		c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
		h.s.Trigger()
		h.expect(c2) // fast-forward is fine

		r.Reset(c1) // rewind
		h.s.Trigger()
		h.waitError(gitsync.ErrorHistory, c1)
		c3 := r.Commit("diverged", map[string]string{"x.yaml": strings.ReplaceAll(webYAML, "web", "x")})
		h.s.Trigger()
		h.waitError(gitsync.ErrorHistory, c3)
		h.noRevision()
		if cur := h.s.Current(); cur.Commit != c2 {
			t.Fatalf("current %s, want %s", cur.Short(), c2)
		}
		// Once history continues from c2 again, it is followed.
		r.Reset(c2)
		c4 := r.Commit("four", map[string]string{"y.yaml": strings.ReplaceAll(webYAML, "web", "y")})
		h.s.Trigger()
		h.expect(c4)
	})
}

func TestSubPath(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("layout", map[string]string{
		"deploy/prod/billing.yaml": billingYAML,
		"deploy/prod/web/web.yaml": webYAML,
		"deploy/staging/bad.yaml":  badYAML, // outside the path: never read
		"ci.yaml":                  "not: a spec\n",
	})
	h := start(t, gitsync.Config{URL: r.URL(), Path: "/deploy/prod/"})
	rev := h.expect(c1)
	if n := len(rev.Spec.Services); n != 2 || rev.Spec.Service("web") == nil {
		t.Fatalf("services: %+v", rev.Spec.Services)
	}
	if st := h.s.Status(); st.Path != "deploy/prod" {
		t.Errorf("status path %q", st.Path)
	}
	// A commit that removes the path is refused.
	c2 := r.Commit("move", map[string]string{"deploy/prod!": ""})
	h.s.Trigger()
	h.waitError(gitsync.ErrorValidate, c2)
	h.noRevision()
}

func TestHTTPAuth(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	srv := gittest.NewServerAuth(t, r.Root, "shoal", "tok3n")
	url := srv.URL + "/remote.git"
	h := start(t, gitsync.Config{URL: url, Auth: gitsync.Auth{Token: "tok3n"}})
	h.expect(c1)
	bad := start(t, gitsync.Config{URL: url, Auth: gitsync.Auth{Token: "wrong"}})
	e := bad.waitError(gitsync.ErrorFetch, "")
	if !strings.Contains(strings.ToLower(e.Message), "auth") {
		t.Errorf("error: %s", e.Message)
	}
	if strings.Contains(e.Message, "wrong") {
		t.Errorf("error leaks the token: %s", e.Message)
	}
	bad.noRevision()
}

func TestCorruptCloneRecovers(t *testing.T) {
	t.Run("objects lost", testObjectsLost)
	t.Run("ref points nowhere", testRefPointsNowhere)
	t.Run("pack truncated", testPackTruncated)
}

func testPackTruncated(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h.expect(c1)
	h.stop() // a fresh process: nothing of the clone cached in memory
	packs, err := filepath.Glob(filepath.Join(data, "repo.git", "objects", "pack", "*.pack"))
	if err != nil || len(packs) == 0 {
		t.Fatalf("no pack in the clone: %v", err)
	}
	for _, p := range packs {
		if err := os.Truncate(p, 40); err != nil {
			t.Fatal(err)
		}
	}
	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	h = start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h.expect(c1) // restored from last-good.json
	h.expect(c2)
	if strings.Contains(h.logs.String(), "FORCE-PUSH") {
		t.Error("a damaged clone was taken for a force-push")
	}
}

func testRefPointsNowhere(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h.expect(c1)
	ref := filepath.Join(data, "repo.git", "refs", "remotes", "origin", "main")
	if err := os.WriteFile(ref, []byte(strings.Repeat("1", 40)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	h.s.Trigger()
	h.expect(c2)
}

func testObjectsLost(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h.expect(c1)
	// Lose every object of the clone behind the syncer's back.
	objects := filepath.Join(data, "repo.git", "objects")
	if err := os.RemoveAll(objects); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(objects, "pack"), 0o755); err != nil {
		t.Fatal(err)
	}
	c2 := r.Commit("two", map[string]string{"web.yaml": webYAML})
	h.s.Trigger()
	h.expect(c2)
}

// TestLocalWithoutGitBinary follows a file:// repository with no git on
// PATH: local repositories are served by go-git's in-process server.
func TestLocalWithoutGitBinary(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	t.Setenv("PATH", t.TempDir())
	h := start(t, gitsync.Config{URL: r.URL()})
	h.expect(c1)
	// A plain path works too.
	h2 := start(t, gitsync.Config{URL: r.Bare})
	h2.expect(c1)
	// So does a non-bare repository, by path.
	h3 := start(t, gitsync.Config{URL: r.Work})
	h3.expect(c1)
}

func TestSSHTransport(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	client := gittest.NewSSHKey(t, "node@shoal.invalid")
	srv := gittest.ServeSSH(t, r.Root, client)
	h := start(t, gitsync.Config{URL: srv.URL("remote.git"), Auth: gitsync.Auth{SSHKeyPath: client.Private, KnownHostsPath: srv.KnownHosts}})
	h.expect(c1)

	// A server whose host key differs from the known one for its address
	// is refused, and so is a server with no known_hosts entry.
	other := gittest.ServeSSH(t, r.Root, client)
	known, err := os.ReadFile(srv.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	_, srvPort, _ := strings.Cut(srv.Addr, ":")
	_, otherPort, _ := strings.Cut(other.Addr, ":")
	wrong := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(wrong, []byte(strings.Replace(string(known), "]:"+srvPort+" ", "]:"+otherPort+" ", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, kh := range map[string]string{"mismatch": wrong, "unknown": srv.KnownHosts} {
		bad := start(t, gitsync.Config{URL: other.URL("remote.git"), Auth: gitsync.Auth{SSHKeyPath: client.Private, KnownHostsPath: kh}})
		e := bad.waitError(gitsync.ErrorFetch, "")
		if !strings.Contains(e.Message, "knownhosts") {
			t.Errorf("%s host key: error %s", name, e.Message)
		}
		bad.noRevision()
	}

	// A key the server does not know is refused.
	stranger := gittest.NewSSHKey(t, "stranger@shoal.invalid")
	denied := start(t, gitsync.Config{URL: srv.URL("remote.git"), Auth: gitsync.Auth{SSHKeyPath: stranger.Private, KnownHostsPath: srv.KnownHosts}})
	denied.waitError(gitsync.ErrorFetch, "")
	denied.noRevision()
}

func TestLifecycle(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})

	// Close without Run, then Run: refused.
	s, err := gitsync.New(gitsync.Config{URL: r.URL(), DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Error("run after close: no error")
	}

	// Cancelling the context stops Run with nil; a second Run is refused.
	revs := make(chan string, 10)
	s, err = gitsync.New(gitsync.Config{URL: r.URL(), DataDir: t.TempDir(), PollInterval: time.Hour,
		OnRevision: func(rev *shoal.Revision) { revs <- rev.Commit }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	select {
	case c := <-revs:
		if c != c1 {
			t.Fatalf("revision %s, want %s", c, c1)
		}
	case <-time.After(wait):
		t.Fatal("no revision")
	}
	if err := s.Run(ctx); err == nil {
		t.Error("second run: no error")
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("run after cancel: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("run did not return after cancel")
	}
	if err := s.Close(); err != nil { // after Run returned: immediate
		t.Error(err)
	}
}
