package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// countingView counts the log files it is asked to open.
type countingView struct {
	fixedView
	opened atomic.Int64
}

func (v *countingView) Logs(s shoal.Slot, follow bool) (io.ReadCloser, error) {
	v.opened.Add(1)
	return v.fixedView.Logs(s, follow)
}

// TestLogsOnlyForSlotsOfTheSpec: /v1/logs serves a slot of the revision
// in force and nothing else; a name that would climb out of the log
// directory never reaches the file system.
func TestLogsOnlyForSlotsOfTheSpec(t *testing.T) {
	v := &countingView{fixedView: fixedView{logs: map[string]string{"web/1": "hi\n"}}}
	srv := httptest.NewServer((&apiServer{view: v, token: "tok", self: "n1", slotExists: replicas(map[string]int{"web": 2})}).handler())
	defer srv.Close()
	get := func(q string) int {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/logs?"+q, nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, q := range []string{
		"service=../../../../var/log/app&slot=1",
		"service=..%2F..%2Fetc%2Fpasswd&slot=0",
		"service=web/../../x&slot=1",
		"service=web&slot=2", // web has slots 0 and 1
		"service=api&slot=0",
	} {
		if code := get(q); code != http.StatusNotFound && code != http.StatusBadRequest {
			t.Errorf("%s: %d", q, code)
		}
	}
	if n := v.opened.Load(); n != 0 {
		t.Fatalf("%d log files opened for slots the spec does not have", n)
	}
	if code := get("service=web&slot=1"); code != http.StatusOK || v.opened.Load() != 1 {
		t.Fatalf("web/1: %d, %d opened", code, v.opened.Load())
	}
	// Without a spec in force, nothing.
	srv2 := httptest.NewServer((&apiServer{view: v, token: "tok"}).handler())
	defer srv2.Close()
	req, _ := http.NewRequest("GET", srv2.URL+"/v1/logs?service=web&slot=1", nil)
	req.Header.Set("Authorization", "Bearer tok")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("no spec: %v %v", resp.StatusCode, err)
	}
}

// TestAPIAlwaysNeedsAToken: an agent given no token generates one into
// its data directory (0600) and keeps it across restarts; the CLI on the
// same machine finds it there; an empty token lets nobody in.
func TestAPIAlwaysNeedsAToken(t *testing.T) {
	dir := t.TempDir()
	tok, generated, err := loadAPIToken("", dir)
	if err != nil || !generated || len(tok) < 32 {
		t.Fatalf("loadAPIToken: %q %v %v", tok, generated, err)
	}
	fi, err := os.Stat(filepath.Join(dir, apiTokenFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	again, generated, err := loadAPIToken("", dir)
	if err != nil || generated || again != tok {
		t.Fatalf("after a restart: %q %v %v, want the same token", again, generated, err)
	}
	if given, _, _ := loadAPIToken("mine", dir); given != "mine" {
		t.Fatalf("a configured token: %q", given)
	}

	v := &fixedView{fleet: fleetStatus{Node: "n1"}}
	srv := httptest.NewServer((&apiServer{view: v, token: tok}).handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	noLocalToken(t)
	if code, _, errOut := runCLI(t, "status", "--agent", addr); code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("without the local token: %d %q", code, errOut)
	}
	t.Setenv("SHOAL_DATA_DIR", dir)
	if code, out, errOut := runCLI(t, "status", "--agent", addr); code != 0 || !strings.Contains(out, "n1") {
		t.Fatalf("with the local agent's token file: %d %q %q", code, out, errOut)
	}

	open := httptest.NewServer((&apiServer{view: v}).handler())
	defer open.Close()
	if resp, err := http.Get(open.URL + "/v1/status"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an API with an empty token answered: %v %v", resp.StatusCode, err)
	}
}

// TestWebhookBodyCappedBeforeHMAC: the real webhook handler, as the API
// mounts it, reads at most 1 MiB of an unsigned body.
func TestWebhookBodyCappedBeforeHMAC(t *testing.T) {
	s, err := gitsync.New(gitsync.Config{URL: "file:///nonexistent", DataDir: t.TempDir(), Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var read atomic.Int64 // what the gitsync handler read
	hook := s.WebhookHandler("secret")
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = struct {
			io.Reader
			io.Closer
		}{&countingReader{r: r.Body, n: &read}, r.Body}
		hook.ServeHTTP(w, r)
	})
	srv := httptest.NewServer((&apiServer{view: &fixedView{}, token: "tok", webhook: counted}).handler())
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/v1/webhook", io.LimitReader(zeros{}, 8<<20))
	req.ContentLength = 8 << 20
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("8 MiB unsigned body: %d", resp.StatusCode)
		}
	}
	if n := read.Load(); n > maxWebhookBytes+1 {
		t.Fatalf("the handler read %d bytes of an unsigned body", n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// FuzzWebhook drives the webhook as the API mounts it with any body and
// signature: no panic, never a 2xx without a valid signature, and a
// valid one on any body under the cap is accepted.
func FuzzWebhook(f *testing.F) {
	s, err := gitsync.New(gitsync.Config{URL: "file:///nonexistent", DataDir: f.TempDir(), Logger: quietLog})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	h := (&apiServer{view: &fixedView{}, token: "tok", webhook: s.WebhookHandler("secret")}).handler()
	f.Add([]byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}`), "push", true)
	f.Add([]byte(`{}`), "ping", false)
	f.Add([]byte(`not json`), "", true)
	f.Fuzz(func(t *testing.T, body []byte, event string, sign bool) {
		req := httptest.NewRequest("POST", "/v1/webhook", bytes.NewReader(body))
		req.Header.Set("X-GitHub-Event", event)
		if sign {
			mac := hmac.New(sha256.New, []byte("secret"))
			mac.Write(body)
			req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		ok := w.Code >= 200 && w.Code < 300
		if !sign && ok {
			t.Fatalf("unsigned body accepted: %d", w.Code)
		}
		if sign && !ok {
			t.Fatalf("signed body refused: %d %s", w.Code, w.Body)
		}
	})
}

// TestAPIServerLimits: the server drops idle connections and bodies that
// never come, lets no more than its limit of connections in at once, and
// a followed log outlives the write timeout.
func TestAPIServerLimits(t *testing.T) {
	lim := apiLimits{read: 300 * time.Millisecond, write: 300 * time.Millisecond, idle: 300 * time.Millisecond, conns: 2}
	var cur, peak atomic.Int64
	release := make(chan struct{})
	pr, pw := io.Pipe()
	v := &pipeView{r: pr}
	api := &apiServer{view: v, token: "tok", self: "n1", slotExists: replicas(map[string]int{"web": 1}),
		webhook: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := io.ReadAll(r.Body); err != nil {
				return
			}
		})}
	mux := http.NewServeMux()
	mux.Handle("/", api.handler())
	mux.HandleFunc("GET /block", func(w http.ResponseWriter, r *http.Request) {
		n := cur.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release
		cur.Add(-1)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveAPIOn(ctx, ln, mux, quietLog, lim) }()
	defer func() { cancel(); <-done }()
	addr := ln.Addr().String()

	// An idle keep-alive connection is closed.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an idle connection stayed open: %v", err)
	}
	c.Close()

	// A body that never comes is cut off.
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /v1/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a stalled body held its connection")
	}
	c.Close()

	// At most lim.conns connections are served at once.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := client.Get("http://" + addr + "/block"); err == nil {
				resp.Body.Close()
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for cur.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for range 5 {
		release <- struct{}{}
	}
	wg.Wait()
	if p := peak.Load(); p != 2 {
		t.Fatalf("%d requests served at once, limit 2", p)
	}

	// A followed log keeps streaming past the write timeout.
	req, _ := http.NewRequest("GET", "http://"+addr+"/v1/logs?service=web&slot=0&follow=1", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 16)
	for i := range 3 {
		fmt.Fprintf(pw, "line %d\n", i)
		if _, err := io.ReadFull(resp.Body, buf[:7]); err != nil {
			t.Fatalf("line %d of a followed log: %v", i, err)
		}
		time.Sleep(lim.write) // the test's subject: time passing beyond the write timeout
	}
	pw.Close()
}

// pipeView serves one log that grows as the test writes it.
type pipeView struct {
	fixedView
	r io.ReadCloser
}

func (v *pipeView) Logs(shoal.Slot, bool) (io.ReadCloser, error) {
	if v.r == nil {
		return nil, fs.ErrNotExist
	}
	return v.r, nil
}

// TestLogsProxiedToThePeerThatRunsTheSlot: the CLI asks only the agent it
// was given; that agent fetches a peer's slot from the peer, showing it a
// token good for that peer's logs alone, never the fleet's token.
func TestLogsProxiedToThePeerThatRunsTheSlot(t *testing.T) {
	noLocalToken(t)
	var sawAuth atomic.Value
	peerView := &fixedView{logs: map[string]string{"web/1": "from n2\n"}}
	peerAPI := (&apiServer{view: peerView, token: "tok", self: "n2", slotExists: replicas(map[string]int{"web": 2})}).handler()
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawAuth.Store(r.Header.Get("Authorization"))
		peerAPI.ServeHTTP(w, r)
	}))
	defer peer.Close()
	v := &fixedView{
		records: []shoal.Record{{Service: "web", Slot: 1, Node: "n2", Addr: "127.0.0.1", Port: 20001}},
		members: []memberView{{Name: "n1", Addr: "127.0.0.1", Status: "alive", APIPort: 1}, {Name: "n2", Addr: "127.0.0.1", Status: "alive", APIPort: portOf(t, peer.URL)}},
	}
	front := httptest.NewServer((&apiServer{view: v, token: "tok", self: "n1", slotExists: replicas(map[string]int{"web": 2})}).handler())
	defer front.Close()
	code, out, errOut := runCLI(t, "logs", "web", "--slot", "1", "--agent", strings.TrimPrefix(front.URL, "http://"), "--token", "tok")
	if code != 0 || out != "from n2\n" {
		t.Fatalf("logs through n1: %d %q %q", code, out, errOut)
	}
	if a, _ := sawAuth.Load().(string); a != "" {
		t.Fatalf("the peer was shown the fleet token: %q", a)
	}
	// The hop token opens the peer's logs and nothing else.
	req, _ := http.NewRequest("GET", peer.URL+"/v1/status", nil)
	req.Header.Set(hopHeader, hopToken("tok", "/v1/logs", "n2"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the hop token opened /v1/status: %v %v", resp.StatusCode, err)
	}
	req, _ = http.NewRequest("GET", peer.URL+"/v1/logs?service=web&slot=1&hop=1", nil)
	req.Header.Set(hopHeader, hopToken("tok", "/v1/logs", "n3"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("another node's hop token opened n2's logs: %v %v", resp.StatusCode, err)
	}
}

// TestAgentRefusesClearGossipOffLoopback: the agent will not start with
// gossip open to the network and no key, and says how to make one.
func TestAgentRefusesClearGossipOffLoopback(t *testing.T) {
	base := agentConfig{Repo: "file:///x", NodeName: "n1", CPU: 1, Memory: 1 << 30, Bind: "0.0.0.0:7946", API: "127.0.0.1:7900", DNS: "127.0.0.1:8600", PortRange: "20000-29999", HandoffTimeout: time.Second, DataDir: t.TempDir()}
	c := base
	if err := c.finish(); err == nil || !strings.Contains(err.Error(), "shoal keygen") || !strings.Contains(err.Error(), "--insecure-gossip") {
		t.Fatalf("no key on 0.0.0.0: %v", err)
	}
	c = base
	c.InsecureGossip = true
	if err := c.finish(); err != nil {
		t.Fatalf("--insecure-gossip: %v", err)
	}
	c = base
	c.Bind = "127.0.0.1:7946"
	if err := c.finish(); err != nil {
		t.Fatalf("loopback: %v", err)
	}
	keyFile := filepath.Join(t.TempDir(), "gossip.key")
	var out bytes.Buffer
	if code := run(context.Background(), []string{"keygen"}, &out, io.Discard); code != 0 {
		t.Fatal("keygen failed")
	}
	if err := os.WriteFile(keyFile, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	c = base
	c.GossipKeyFile = keyFile
	if err := c.finish(); err != nil {
		t.Fatalf("--gossip-key-file: %v", err)
	}
	keys, err := gossipKeys(c)
	if err != nil || len(keys) != 1 || len(keys[0]) != 32 {
		t.Fatalf("the keygen key: %d keys, %v", len(keys), err)
	}
}
