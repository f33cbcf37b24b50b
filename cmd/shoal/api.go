package main

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/shoal-run/shoal"
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
	token   string       // required on every request but the webhook when set
	webhook http.Handler // POST /v1/webhook, checks its own HMAC
	peer    http.Handler // GET /v1/records/local, the anti-entropy pull
	metrics http.Handler // GET /metrics
	jobs    http.Handler // /v1/jobs: cron jobs, their history, manual runs
	log     *slog.Logger
}

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
	if a.peer != nil {
		mux.Handle("GET /v1/records/local", a.peer)
	}
	if a.metrics != nil {
		mux.Handle("GET /metrics", a.metrics)
	}
	if a.jobs != nil {
		mux.Handle("/v1/jobs", a.jobs)
		mux.Handle("/v1/jobs/", a.jobs)
	}
	authed := a.requireToken(mux)
	root := http.NewServeMux()
	if a.webhook != nil {
		root.Handle("POST /v1/webhook", a.webhook)
	}
	root.Handle("/", authed)
	return root
}

// requireToken checks the bearer token when one is configured. The token
// is compared in constant time so it cannot be guessed byte by byte.
func (a *apiServer) requireToken(next http.Handler) http.Handler {
	if a.token == "" {
		return next
	}
	want := []byte("Bearer " + a.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			http.Error(w, "missing or wrong token: pass --token or set SHOAL_TOKEN", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *apiServer) serveLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	svc := q.Get("service")
	slot, err := strconv.Atoi(q.Get("slot"))
	if svc == "" || err != nil || slot < 0 {
		http.Error(w, "want ?service=NAME&slot=N", http.StatusBadRequest)
		return
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	rc, err := a.view.Logs(shoal.Slot{Service: svc, Index: slot}, follow)
	if errors.Is(err, fs.ErrNotExist) {
		http.Error(w, fmt.Sprintf("no instance %s/%d on this node", svc, slot), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer rc.Close()
	// Stop reading when the client goes away, even while following.
	go func() { <-r.Context().Done(); rc.Close() }()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
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
