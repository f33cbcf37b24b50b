package main

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/shoal-run/shoal"
)

// fixedView serves a fixed fleet; the API and CLI around it are real.
type fixedView struct {
	fleet   fleetStatus
	records []shoal.Record
	members []memberView
	logs    map[string]string
}

func (v *fixedView) Status() nodeStatus {
	return nodeStatus{Node: v.fleet.Node, Revision: v.fleet.Revision}
}
func (v *fixedView) Fleet() fleetStatus      { return v.fleet }
func (v *fixedView) Members() []memberView   { return v.members }
func (v *fixedView) Records() []shoal.Record { return v.records }
func (v *fixedView) Logs(s shoal.Slot, _ bool) (io.ReadCloser, error) {
	l, ok := v.logs[s.String()]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return io.NopCloser(strings.NewReader(l)), nil
}

func newTestAPI(t *testing.T, token string) (*httptest.Server, *fixedView) {
	t.Helper()
	v := &fixedView{
		fleet: fleetStatus{Node: "n1", Revision: "0123456789abcdef0123",
			Members:  []memberView{{Name: "n1", Addr: "127.0.0.1", Status: "alive", Revision: "0123456789abcdef0123", CPU: 2, Memory: 1 << 30}},
			Services: []serviceStatus{{Name: "web", Desired: 2, Running: 2, Healthy: 1, Nodes: []serviceNode{{Node: "n1", Desired: 2, Running: 2, Healthy: 1}}}},
		},
		records: []shoal.Record{{Service: "web", Slot: 1, Node: "n1", Addr: "127.0.0.1", Port: 20001, Healthy: true}},
		logs:    map[string]string{"web/1": "hello from web 1\n"},
	}
	webhook := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	srv := httptest.NewServer((&apiServer{view: v, token: token, webhook: webhook, self: "n1", slotExists: replicas(map[string]int{"web": 2})}).handler())
	t.Cleanup(srv.Close)
	v.members = []memberView{{Name: "n1", Addr: "127.0.0.1", APIPort: portOf(t, srv.URL)}}
	return srv, v
}

func portOf(t *testing.T, u string) int {
	t.Helper()
	i := strings.LastIndex(u, ":")
	var p int
	for _, c := range u[i+1:] {
		p = p*10 + int(c-'0')
	}
	return p
}

func TestAPIToken(t *testing.T) {
	srv, _ := newTestAPI(t, "s3cret")
	for _, tc := range []struct {
		method, path, auth string
		want               int
	}{
		{"GET", "/v1/status", "", 401},
		{"GET", "/v1/status", "Bearer wrong", 401},
		{"GET", "/v1/status", "Bearer s3cret", 200},
		{"GET", "/v1/fleet", "Bearer s3cret", 200},
		{"POST", "/v1/webhook", "", 202}, // the webhook checks its own HMAC
		{"GET", "/v1/logs?service=web&slot=1", "Bearer s3cret", 200},
		{"GET", "/v1/logs?service=web&slot=9", "Bearer s3cret", 404},
		{"GET", "/v1/logs?service=web", "Bearer s3cret", 400},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s auth=%q: %d, want %d", tc.method, tc.path, tc.auth, resp.StatusCode, tc.want)
		}
	}
}

// replicas is slotExists for services with so many replicas each.
func replicas(n map[string]int) func(shoal.Slot) bool {
	return func(s shoal.Slot) bool { return s.Index >= 0 && s.Index < n[s.Service] }
}

// noLocalToken keeps the CLI from finding a token on this machine.
func noLocalToken(t *testing.T) {
	t.Setenv("SHOAL_TOKEN", "")
	t.Setenv("SHOAL_API_TOKEN", "")
	t.Setenv("SHOAL_DATA_DIR", t.TempDir())
}

func TestCLIAgainstAPI(t *testing.T) {
	noLocalToken(t)
	srv, _ := newTestAPI(t, "tok")
	addr := strings.TrimPrefix(srv.URL, "http://")

	code, out, errOut := runCLI(t, "status", "--agent", addr, "--token", "tok")
	if code != 0 || !strings.Contains(out, "web") || !strings.Contains(out, "n1:1/2/2") || !strings.Contains(out, "0123456789ab") {
		t.Errorf("status: %d %q %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, "members", "--agent", addr, "--token", "tok", "-o", "json")
	if code != 0 || !strings.Contains(out, `"name": "n1"`) {
		t.Errorf("members: %d %q", code, out)
	}
	code, out, errOut = runCLI(t, "logs", "web", "--slot", "1", "--agent", addr, "--token", "tok")
	if code != 0 || out != "hello from web 1\n" {
		t.Errorf("logs: %d %q %q", code, out, errOut)
	}
	code, _, errOut = runCLI(t, "logs", "web", "--slot", "5", "--agent", addr, "--token", "tok")
	if code != 1 || !strings.Contains(errOut, "no running instance of web/5") {
		t.Errorf("logs missing slot: %d %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "status", "--agent", addr)
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Errorf("status without token: %d %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "status", "--agent", "127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "is `shoal agent` running there?") {
		t.Errorf("status no agent: %d %q", code, errOut)
	}
}

func TestIsLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7946": true, "localhost:1": true, "[::1]:80": true,
		"0.0.0.0:7946": false, ":7946": false, "10.0.0.1:7946": false, "bad": false,
	} {
		if got := isLoopbackAddr(addr); got != want {
			t.Errorf("isLoopbackAddr(%q) = %v", addr, got)
		}
	}
}
