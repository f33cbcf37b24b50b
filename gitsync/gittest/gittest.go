// Package gittest makes real Git repositories for tests: a bare "remote"
// with a work clone to commit from, served over file:// and over HTTP by
// `git http-backend` running behind net/http/cgi in the test process, plus
// OpenPGP (gpg) and SSH (ssh-keygen) signing keys for signed commits.
//
// It shells out to the git, gpg and ssh-keygen binaries; only tests use it.
package gittest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Repo is a bare repository (the remote) with a work clone that commits are
// made in and pushed from. Branch main is created by the first Commit.
type Repo struct {
	t    testing.TB
	Root string // directory holding remote.git and work/
	Bare string // the bare repository the syncer fetches from
	Work string // the work clone
	env  []string

	mu  sync.Mutex
	srv *Server
}

// New makes an empty bare repository with a work clone of it.
func New(t testing.TB) *Repo {
	t.Helper()
	root := t.TempDir()
	r := &Repo{t: t, Root: root, Bare: filepath.Join(root, "remote.git"), Work: filepath.Join(root, "work")}
	home := filepath.Join(root, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	r.env = append(os.Environ(),
		"HOME="+home,
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Shoal Test", "GIT_AUTHOR_EMAIL=test@shoal.invalid",
		"GIT_COMMITTER_NAME=Shoal Test", "GIT_COMMITTER_EMAIL=test@shoal.invalid",
		"GNUPGHOME="+filepath.Join(root, "gnupg-none"),
	)
	r.run(root, "init", "-q", "--bare", "-b", "main", r.Bare)
	r.run(r.Bare, "config", "http.receivepack", "true")
	r.run(root, "init", "-q", "-b", "main", r.Work)
	r.run(r.Work, "remote", "add", "origin", r.Bare)
	return r
}

func (r *Repo) run(dir string, args ...string) string {
	r.t.Helper()
	out, err := r.runErr(dir, nil, args...)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

func (r *Repo) runErr(dir string, extraEnv []string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(append([]string{}, r.env...), extraEnv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Git runs git in the work clone and returns its trimmed output.
func (r *Repo) Git(args ...string) string {
	r.t.Helper()
	return r.run(r.Work, args...)
}

// URL is the file:// URL of the bare repository.
func (r *Repo) URL() string { return "file://" + r.Bare }

// Write writes files (slash paths relative to the work tree) without
// committing. An empty content with a name ending in "!" removes the file
// named without the "!".
func (r *Repo) Write(files map[string]string) {
	r.t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.HasSuffix(n, "!") {
			if err := os.RemoveAll(filepath.Join(r.Work, filepath.FromSlash(strings.TrimSuffix(n, "!")))); err != nil {
				r.t.Fatal(err)
			}
			continue
		}
		p := filepath.Join(r.Work, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(files[n]), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
}

// CommitOption changes how Commit signs.
type CommitOption func(*commitOpts)

type commitOpts struct {
	args []string
	env  []string
}

// SignedBy signs the commit with k (an *OpenPGPKey or *SSHKey).
func SignedBy(k Signer) CommitOption {
	return func(o *commitOpts) {
		a, e := k.signArgs()
		o.args = append(o.args, a...)
		o.env = append(o.env, e...)
	}
}

// Commit writes files, commits everything in the work tree with msg and
// pushes branch main to the bare repository. It returns the commit hash.
func (r *Repo) Commit(msg string, files map[string]string, opts ...CommitOption) string {
	r.t.Helper()
	h := r.CommitUnpushed(msg, files, opts...)
	r.Push(false)
	return h
}

// CommitUnpushed is Commit without the push: the commit exists only in the
// work clone until Push.
func (r *Repo) CommitUnpushed(msg string, files map[string]string, opts ...CommitOption) string {
	r.t.Helper()
	r.Write(files)
	var o commitOpts
	for _, f := range opts {
		f(&o)
	}
	r.run(r.Work, "add", "-A")
	args := append(append([]string{}, o.args...), "commit", "-q", "--allow-empty", "-m", msg)
	if _, err := r.runErr(r.Work, o.env, args...); err != nil {
		r.t.Fatal(err)
	}
	return r.Head()
}

// Head is the hash of the work clone's HEAD.
func (r *Repo) Head() string {
	r.t.Helper()
	return r.run(r.Work, "rev-parse", "HEAD")
}

// Push pushes main to the bare repository, with --force when force is set.
func (r *Repo) Push(force bool) {
	r.t.Helper()
	args := []string{"push", "-q", "origin", "main"}
	if force {
		args = append(args, "--force")
	}
	r.run(r.Work, args...)
}

// Reset moves the work clone's main to rev (e.g. "HEAD~1") and force-pushes
// it, rewriting the remote's history.
func (r *Repo) Reset(rev string) {
	r.t.Helper()
	r.run(r.Work, "reset", "-q", "--hard", rev)
	r.Push(true)
}

// Serve starts (once) an HTTP server on 127.0.0.1 that serves the bare
// repository through git http-backend, fetch and push, and returns it.
// The repository's URL is srv.URL + "/remote.git".
func (r *Repo) Serve() *Server {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv == nil {
		r.srv = NewServer(r.t, r.Root)
		r.srv.RepoURL = r.srv.URL + "/remote.git"
	}
	return r.srv
}

// Server serves every repository under a directory over smart HTTP.
// Down(true) makes it drop connections without an answer, like a remote
// that went away; Requests counts requests served.
type Server struct {
	*httptest.Server
	RepoURL  string // set by Repo.Serve
	down     atomic.Bool
	requests atomic.Int64
	bytesOut atomic.Int64
	// Auth, when set, is checked against each request's basic auth.
	authUser, authPass string
}

// NewServer serves the Git repositories under root (git http-backend with
// GIT_PROJECT_ROOT=root and GIT_HTTP_EXPORT_ALL) on 127.0.0.1.
func NewServer(t testing.TB, root string) *Server {
	t.Helper()
	return newServer(t, root, "", "")
}

// NewServerAuth is NewServer with HTTP basic auth required.
func NewServerAuth(t testing.TB, root, user, pass string) *Server {
	t.Helper()
	return newServer(t, root, user, pass)
}

func newServer(t testing.TB, root, user, pass string) *Server {
	backend, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatalf("git --exec-path: %v", err)
	}
	h := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(backend)), "git-http-backend"),
		Env: []string{
			"GIT_PROJECT_ROOT=" + root,
			"GIT_HTTP_EXPORT_ALL=1",
			"GIT_CONFIG_NOSYSTEM=1",
			"REMOTE_USER=shoal-test",
			"GIT_COMMITTER_NAME=Shoal Test", "GIT_COMMITTER_EMAIL=test@shoal.invalid",
		},
	}
	s := &Server{authUser: user, authPass: pass}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if s.down.Load() {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if s.authUser != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != s.authUser || p != s.authPass {
				w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		s.requests.Add(1)
		cw := &countingWriter{ResponseWriter: w, n: &s.bytesOut}
		h.ServeHTTP(cw, req)
	}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Listener = l
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// Down makes the server drop (true) or serve (false) requests.
func (s *Server) Down(down bool) { s.down.Store(down) }

// Requests is the number of requests served so far.
func (s *Server) Requests() int64 { return s.requests.Load() }

// BytesOut is the number of response body bytes served so far.
func (s *Server) BytesOut() int64 { return s.bytesOut.Load() }

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ForgeSignature commits files with msg, unsigned, then grafts the
// signature of the commit signedBy onto it and pushes the result: a commit
// that carries a genuine signature which does not match its content.
func (r *Repo) ForgeSignature(signedBy, msg string, files map[string]string) string {
	r.t.Helper()
	r.CommitUnpushed(msg, files)
	var sig []string
	in := false
	for _, line := range strings.Split(r.run(r.Work, "cat-file", "commit", signedBy), "\n") {
		switch {
		case strings.HasPrefix(line, "gpgsig "):
			in = true
			sig = append(sig, line)
		case in && strings.HasPrefix(line, " "):
			sig = append(sig, line)
		default:
			in = false
		}
	}
	if len(sig) == 0 {
		r.t.Fatalf("commit %s is not signed", signedBy)
	}
	raw := r.run(r.Work, "cat-file", "commit", "HEAD") + "\n"
	head, body, _ := strings.Cut(raw, "\n\n")
	forged := head + "\n" + strings.Join(sig, "\n") + "\n\n" + body
	cmd := exec.Command("git", "hash-object", "-t", "commit", "-w", "--stdin")
	cmd.Dir = r.Work
	cmd.Env = r.env
	cmd.Stdin = strings.NewReader(forged)
	out, err := cmd.Output()
	if err != nil {
		r.t.Fatalf("git hash-object: %v", err)
	}
	h := strings.TrimSpace(string(out))
	r.run(r.Work, "reset", "-q", "--hard", h)
	r.Push(false)
	return h
}
