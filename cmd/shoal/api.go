package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/netutil"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/mesh"
)

// agentView is what the API reads from the agent. The agent implements it;
// tests can serve a fixed view.
type agentView interface {
	Status() nodeStatus
	Fleet() fleetStatus
	Members() []memberView
	Records() []shoal.Record
	// Logs streams a local instance's output; follow keeps it open.
	Logs(slot shoal.Slot, follow bool) (io.ReadCloser, error)
}

// apiServer is the agent's HTTP API.
type apiServer struct {
	view    agentView
	token   string       // required on every request but the webhook
	webhook http.Handler // POST /v1/webhook, checks its own HMAC
	peer    http.Handler // GET /v1/records/local, the anti-entropy pull
	metrics http.Handler // GET /metrics
	// jobs are the cron jobs, this node's runs and manual triggers:
	// /v1/jobs gathers the history fleet-wide, /v1/jobs/run hands a run
	// to its runner. Nil serves neither.
	jobs jobsBackend
	log  *slog.Logger
	// self is this node's name: a log stream for another node's slot is
	// fetched from that node (proxyLogs).
	self string
	// slotExists says whether the revision in force has the slot (a
	// service's replica, or a job's run); /v1/logs serves nothing else.
	// Nil refuses every slot.
	slotExists func(shoal.Slot) bool
	// keyring manages the fleet's gossip keys; nil without gossip.
	keyring keyringManager
}

// keyringManager is the fleet's gossip keyring (mesh.Mesh).
type keyringManager interface {
	ListKeys() (mesh.KeyringStatus, error)
	InstallKey(key string) (mesh.KeyringStatus, error)
	UseKey(key string) (mesh.KeyringStatus, error)
	RemoveKey(key string) (mesh.KeyringStatus, error)
}

// maxWebhookBytes is what the webhook reads before its HMAC is checked.
const maxWebhookBytes = 1 << 20

// apiLimits bound what clients can hold of the API server.
type apiLimits struct {
	read, write, idle time.Duration // write is lifted while a log is followed
	conns             int
}

var defaultAPILimits = apiLimits{read: 30 * time.Second, write: time.Minute, idle: 2 * time.Minute, conns: 256}

// isLoopbackAddr reports whether a listen address binds only loopback.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (a *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.view.Status()) })
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.view.Fleet()) })
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.view.Members()) })
	mux.HandleFunc("GET /v1/records", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.view.Records()) })
	mux.HandleFunc("GET /v1/logs", a.serveLogs)
	mux.HandleFunc("GET /v1/keyring", a.serveKeyring)
	mux.HandleFunc("POST /v1/keyring/{op}", a.serveKeyring)
	if a.peer != nil {
		mux.Handle("GET /v1/records/local", a.peer)
	}
	if a.metrics != nil {
		mux.Handle("GET /metrics", a.metrics)
	}
	if a.jobs != nil {
		mux.HandleFunc("GET /v1/jobs", a.serveJobs)
		mux.HandleFunc("POST /v1/jobs/run", a.serveJobRun)
	}
	authed := a.requireToken(mux)
	root := http.NewServeMux()
	if a.webhook != nil {
		// Capped before the handler reads it to check its HMAC: an
		// unsigned body costs at most this much.
		root.Handle("POST /v1/webhook", http.MaxBytesHandler(a.webhook, maxWebhookBytes))
	}
	a.mountWeb(root) // the web view: /login, /ui/
	root.Handle("/", authed)
	return root
}

// requireToken checks the bearer token, compared in constant time so it
// cannot be guessed byte by byte. An empty token refuses everything: the
// agent always has one (loadAPIToken). A request a peer makes on a
// client's behalf (hop=1) carries instead a token good for that one path
// on this node only (hopToken).
func (a *apiServer) requireToken(next http.Handler) http.Handler {
	want := []byte("Bearer " + a.token)
	hop := map[string][]byte{}
	for _, p := range hopPaths {
		hop[p] = []byte(hopToken(a.token, p, a.self))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		ok := a.token != "" && subtle.ConstantTimeCompare(got, want) == 1
		if h, hoppable := hop[r.URL.Path]; !ok && a.token != "" && hoppable && r.URL.Query().Get("hop") == "1" {
			ok = subtle.ConstantTimeCompare([]byte(r.Header.Get(hopHeader)), h) == 1
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			http.Error(w, "missing or wrong token: pass --token or set SHOAL_TOKEN", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// serveLogs streams a slot's output. Only a slot of the revision in
// force is served, named by a service or job of the spec: the name never
// reaches a file path otherwise. A slot that runs on another node is
// fetched from that node, so the CLI talks to one agent only.
func (a *apiServer) serveLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	svc := q.Get("service")
	idx, err := strconv.Atoi(q.Get("slot"))
	if svc == "" || err != nil || idx < 0 {
		http.Error(w, "want ?service=NAME&slot=N", http.StatusBadRequest)
		return
	}
	slot := shoal.Slot{Service: svc, Index: idx}
	if a.slotExists == nil || !a.slotExists(slot) {
		http.Error(w, fmt.Sprintf("no running instance of %s: the revision in force has no such slot", slot), http.StatusNotFound)
		return
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	if q.Get("hop") != "1" {
		// node names where the slot ran when no record says so any more:
		// a job run that ended, found in the fleet's job history.
		if name := q.Get("node"); name != "" && name != a.self {
			node, ok := a.member(name)
			if !ok {
				http.Error(w, fmt.Sprintf("logs of %s: node %s is not an alive member", slot, name), http.StatusBadGateway)
				return
			}
			a.proxyLogs(w, r, node, slot, follow)
			return
		}
		if node, ok := a.runsOn(slot); ok && node.Name != a.self && q.Get("node") == "" {
			a.proxyLogs(w, r, node, slot, follow)
			return
		}
	}
	rc, err := a.view.Logs(slot, follow)
	if errors.Is(err, fs.ErrNotExist) {
		http.Error(w, fmt.Sprintf("no running instance of %s on this node", slot), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer rc.Close()
	if follow {
		// Following outlasts the write timeout by design.
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
	}
	// Stop reading when the client goes away, even while following.
	stop := context.AfterFunc(r.Context(), func() { rc.Close() })
	defer stop()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	streamTo(w, rc)
}

// streamTo copies r to w, flushing each read. The headers go first, so
// a client following a quiet log knows at once that it is connected.
func streamTo(w http.ResponseWriter, r io.Reader) {
	fl, _ := w.(http.Flusher)
	if fl != nil {
		fl.Flush()
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			return
		}
	}
}

// runsOn is the alive member whose records hold slot.
func (a *apiServer) runsOn(slot shoal.Slot) (memberView, bool) {
	node := ""
	for _, r := range a.view.Records() {
		if r.Service == slot.Service && r.Slot == slot.Index {
			node = r.Node
			break
		}
	}
	if node == "" {
		return memberView{}, false
	}
	return a.member(node)
}

// hopHeader carries the token of a request one agent makes of another.
const hopHeader = "X-Shoal-Hop"

// hopPaths are the requests an agent makes of a peer on a client's
// behalf, with hop=1: the peer answers for itself and forwards nothing.
// Each has a hop token of its own.
var hopPaths = []string{"/v1/logs", "/v1/jobs", "/v1/jobs/run"}

// hopToken is what an agent shows a peer named node to make the request
// at path there (a log stream, a job history, a job run): it proves the
// fleet's API token without giving it away, and is good for that path on
// that node only — so a member that lies about running a slot learns
// nothing it can use elsewhere.
func hopToken(token, path, node string) string {
	what := strings.ReplaceAll(strings.TrimPrefix(path, "/v1/"), "/", " ")
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("shoal " + what + " hop to " + node))
	return hex.EncodeToString(mac.Sum(nil))
}

// hop makes the request at path of the peer node on a client's behalf:
// hop=1 in the query, and the hop token for that path and peer, never the
// fleet's token.
func (a *apiServer) hop(ctx context.Context, method string, node memberView, path string, q url.Values) (*http.Response, error) {
	q.Set("hop", "1")
	u := "http://" + joinHostPort(node.Addr, node.APIPort) + path + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(hopHeader, hopToken(a.token, path, node.Name))
	return peerClient.Do(req)
}

// member is the alive member named node that serves an API.
func (a *apiServer) member(node string) (memberView, bool) {
	for _, m := range a.view.Members() {
		if m.Name == node && m.APIPort > 0 && m.Status == "alive" {
			return m, true
		}
	}
	return memberView{}, false
}

// proxyLogs fetches a slot's output from the node that runs it.
func (a *apiServer) proxyLogs(w http.ResponseWriter, r *http.Request, node memberView, slot shoal.Slot, follow bool) {
	q := url.Values{"service": {slot.Service}, "slot": {strconv.Itoa(slot.Index)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := a.hop(r.Context(), http.MethodGet, node, "/v1/logs", q)
	if err != nil {
		http.Error(w, fmt.Sprintf("logs of %s from %s: %v", slot, node.Name, err), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	if follow {
		http.NewResponseController(w).SetWriteDeadline(time.Time{})
	}
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	streamTo(w, resp.Body)
}

// peerClient makes agent-to-agent requests: no redirects followed, no
// proxy from the environment; a response must start within the timeout.
var peerClient = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Transport:     &http.Transport{ResponseHeaderTimeout: 10 * time.Second},
}

// serveKeyring lists the fleet's gossip keys (GET) or changes them (POST
// /v1/keyring/install|use|remove with {"key": "..."}).
func (a *apiServer) serveKeyring(w http.ResponseWriter, r *http.Request) {
	if a.keyring == nil {
		http.Error(w, "this agent has no gossip keyring", http.StatusNotFound)
		return
	}
	var st mesh.KeyringStatus
	var err error
	if r.Method == http.MethodGet {
		st, err = a.keyring.ListKeys()
	} else {
		var body struct {
			Key string `json:"key"`
		}
		if derr := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); derr != nil || body.Key == "" {
			http.Error(w, `want {"key": "BASE64"}`, http.StatusBadRequest)
			return
		}
		switch r.PathValue("op") {
		case "install":
			st, err = a.keyring.InstallKey(body.Key)
		case "use":
			st, err = a.keyring.UseKey(body.Key)
		case "remove":
			st, err = a.keyring.RemoveKey(body.Key)
		default:
			http.Error(w, "want /v1/keyring/install, use or remove", http.StatusNotFound)
			return
		}
		a.log.Info("gossip keyring", "op", r.PathValue("op"), "err", err)
	}
	out := keyringReply{Status: st}
	if err != nil {
		out.Error = err.Error()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		json.NewEncoder(w).Encode(out)
		return
	}
	writeJSON(w, out)
}

// keyringReply is the answer of /v1/keyring.
type keyringReply struct {
	Status mesh.KeyringStatus `json:"status"`
	Error  string             `json:"error,omitempty"`
}

// serveAPI runs the HTTP API until ctx ends: with read, write and idle
// timeouts (a followed log lifts its write deadline) and a bound on
// connections, so slow or many clients cannot starve the agent.
func serveAPI(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api: listen %s: %w", addr, err)
	}
	return serveAPIOn(ctx, ln, h, log, defaultAPILimits)
}

func serveAPIOn(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, lim apiLimits) error {
	ln = netutil.LimitListener(ln, lim.conns)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: min(10*time.Second, lim.read), ReadTimeout: lim.read,
		WriteTimeout: lim.write, IdleTimeout: lim.idle}
	done := make(chan struct{})
	defer close(done)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("api listening", "addr", ln.Addr().String())
	err := srv.Serve(ln)
	if !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: %w", err)
	}
	<-stopped
	return nil
}

// apiTokenFile is where an agent keeps the token it generated, and where
// the CLI on the same machine finds it.
const apiTokenFile = "api-token"

// loadAPIToken returns the token the agent requires: the one configured,
// else the one in dataDir, else a new one written there (mode 0600).
func loadAPIToken(configured, dataDir string) (token string, generated bool, err error) {
	if configured != "" {
		return configured, false, nil
	}
	path := filepath.Join(dataDir, apiTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		if t := strings.TrimSpace(string(b)); t != "" {
			return t, false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("api token %s: %w", path, err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("api token: %w", err)
	}
	token = hex.EncodeToString(raw)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", false, fmt.Errorf("api token: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("api token %s: %w", path, err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("api token %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("api token %s: %w", path, err)
	}
	return token, true, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// apiClient talks to one agent's API.
type apiClient struct {
	base  string // http://host:port
	token string
	http  *http.Client
}

func newAPIClient(addr, token string) *apiClient {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &apiClient{base: strings.TrimRight(addr, "/"), token: token, http: &http.Client{}}
}

func (c *apiClient) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w (is `shoal agent` running there? set --agent)", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("agent %s: GET %s: %s: %s", c.base, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// postJSON sends in as JSON and decodes the answer into out, also when
// the status says the operation failed (its body explains).
func (c *apiClient) postJSON(path string, in, out any) (int, error) {
	body, _ := json.Marshal(in)
	req, err := http.NewRequest(http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("agent %s: %w (is `shoal agent` running there? set --agent)", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("agent %s: POST %s: %w", c.base, path, err)
	}
	if json.Unmarshal(data, out) != nil && resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fmt.Errorf("agent %s: POST %s: %s: %s", c.base, path, resp.Status, strings.TrimSpace(string(data)))
	}
	return resp.StatusCode, nil
}

func (c *apiClient) getJSON(path string, out any) error {
	resp, err := c.get(path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent %s: decode %s: %w", c.base, path, err)
	}
	return nil
}
