package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/node"
)

// webView is a fleet the web view's tests change under it: a fake (the
// tests check the pages, not the fleet), safe to change while served.
type webView struct {
	mu        sync.Mutex
	fleet     fleetStatus
	records   []shoal.Record
	instances []shoal.Instance
	specs     map[string]webServiceSpec
	logs      map[string]string
}

func (v *webView) Status() nodeStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return nodeStatus{Node: v.fleet.Node, Revision: v.fleet.Revision, Instances: append([]shoal.Instance{}, v.instances...)}
}
func (v *webView) Fleet() fleetStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	f := v.fleet
	f.Members = append([]memberView{}, f.Members...)
	f.Services = append([]serviceStatus{}, f.Services...)
	return f
}
func (v *webView) Members() []memberView { return v.Fleet().Members }
func (v *webView) Records() []shoal.Record {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]shoal.Record{}, v.records...)
}
func (v *webView) WebServices() map[string]webServiceSpec {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.specs
}
func (v *webView) Logs(s shoal.Slot, _ bool) (io.ReadCloser, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	l, ok := v.logs[s.String()]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return io.NopCloser(strings.NewReader(l)), nil
}

// update changes the fleet under the lock.
func (v *webView) update(f func(v *webView)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f(v)
}

const webRev = "4f2a1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49"

// newWebView is three nodes running web (3 slots, one of them already
// at the new definition) and redis (1 slot).
func newWebView() *webView {
	mem := func(name, zone string) memberView {
		return memberView{Name: name, Addr: "10.0.0." + name[1:], Status: "alive", Revision: webRev,
			CPU: 4, Memory: 8 << 30, Labels: map[string]string{"zone": zone}}
	}
	rec := func(svc string, slot int, node, spec string, healthy bool) shoal.Record {
		return shoal.Record{Service: svc, Slot: slot, Node: node, Addr: "10.0.0." + node[1:], Port: 20000 + slot,
			PortName: "http", Revision: webRev, Spec: spec, Healthy: healthy}
	}
	return &webView{
		fleet: fleetStatus{Node: "n1", Revision: webRev,
			Members: []memberView{mem("n1", "a"), mem("n2", "b"), mem("n3", "a")},
			Services: []serviceStatus{
				{Name: "redis", Desired: 1, Running: 1, Healthy: 1, Nodes: []serviceNode{{Node: "n2", Desired: 1, Running: 1, Healthy: 1}}},
				{Name: "web", Desired: 3, Running: 3, Healthy: 3, Nodes: []serviceNode{
					{Node: "n1", Desired: 1, Running: 1, Healthy: 1}, {Node: "n2", Desired: 1, Running: 1, Healthy: 1},
					{Node: "n3", Desired: 1, Running: 1, Healthy: 1}}},
			},
		},
		records: []shoal.Record{rec("web", 0, "n1", "aaaa1111", true), rec("web", 1, "n2", "0ld0ld00", true),
			rec("web", 2, "n3", "0ld0ld00", true), rec("redis", 0, "n2", "bbbb2222", true)},
		instances: []shoal.Instance{{Slot: shoal.Slot{Service: "web", Index: 0}, Node: "n1", Image: "nginx:1.27",
			SpecHash: "aaaa1111ffff", Revision: webRev, State: shoal.StateHealthy}},
		specs: map[string]webServiceSpec{
			"web":   {Image: "nginx:1.27", Spec: "aaaa1111", Resources: shoal.Resources{CPU: 0.5, Memory: 256 << 20}},
			"redis": {Image: "redis:7", Spec: "bbbb2222", Resources: shoal.Resources{CPU: 1, Memory: 1 << 30}},
		},
		logs: map[string]string{"web/0": "GET / 200\nGET /health 200\n"},
	}
}

// webJobs is one cron job with two runs behind it.
type webJobs struct{}

func (webJobs) JobsView(name string, now time.Time) jobsView {
	tick := now.Truncate(time.Hour).Add(-time.Hour).UTC()
	return jobsView{Node: "n1",
		Jobs: []jobView{{Name: "backup", Schedule: "0 * * * *", Concurrency: "forbid", Next: tick.Add(2 * time.Hour), Running: []runningRun{}}},
		History: []jobRun{
			{Job: "backup", Tick: tick, Node: "n2", State: "ended", Reason: string(node.ReasonExited), ExitCode: 3, Detail: "disk full"},
			{Job: "backup", Tick: tick.Add(-time.Hour), Node: "n3", State: "ended", Reason: string(node.ReasonExited)},
		}}
}
func (webJobs) Runner(string, time.Time) (string, error)     { return "n1", nil }
func (webJobs) Trigger(string, time.Time) (triggered, error) { return triggered{}, errNoJob }

// newWebServer serves v's API and web view with token "s3cret". Its
// webhook is the real one, which checks its own HMAC.
func newWebServer(t *testing.T, v *webView) *httptest.Server {
	t.Helper()
	s, err := gitsync.New(gitsync.Config{URL: "file:///nonexistent", DataDir: t.TempDir(), Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	api := &apiServer{view: v, token: "s3cret", self: "n1", webhook: s.WebhookHandler("hooksecret"), jobs: webJobs{},
		slotExists: replicas(map[string]int{"web": 3, "redis": 1})}
	srv := httptest.NewServer(api.handler())
	t.Cleanup(srv.Close)
	return srv
}

// noRedirects is a client that shows redirects instead of following them.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// webLogin posts token to /login and returns the answer.
func webLogin(t *testing.T, srv *httptest.Server, token string) *http.Response {
	t.Helper()
	resp, err := noRedirects.PostForm(srv.URL+"/login", url.Values{"token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func webGet(t *testing.T, srv *httptest.Server, path string, cookie *http.Cookie, auth string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := noRedirects.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// TestWebLogin: the right token sets an HttpOnly, SameSite=Strict cookie
// that is not the token, and the cookie opens the fleet page, which shows
// the nodes and services.
func TestWebLogin(t *testing.T) {
	srv := newWebServer(t, newWebView())
	resp := webLogin(t, srv, "s3cret")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("login: %s to %q, want 303 to /ui/", resp.Status, resp.Header.Get("Location"))
	}
	var c *http.Cookie
	for _, rc := range resp.Cookies() {
		if rc.Name == webCookie {
			c = rc
		}
	}
	if c == nil {
		t.Fatal("login set no session cookie")
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, "s3cret") {
		t.Fatalf("cookie %+v: want HttpOnly, SameSite=Strict, no token in it", c)
	}
	r, body := webGet(t, srv, "/ui/", c, "")
	if r.StatusCode != 200 {
		t.Fatalf("GET /ui/ with the cookie: %s", r.Status)
	}
	for _, want := range []string{`"n1"`, `"n2"`, `"n3"`, `"web"`, `"redis"`, "/ui/static/app.js"} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet page lacks %s", want)
		}
	}
	if csp := r.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("fleet page CSP %q", csp)
	}
	for _, path := range []string{"/ui/api/fleet", "/ui/services/web", "/ui/api/services/web", "/ui/jobs", "/ui/api/jobs",
		"/ui/api/logs?service=web&slot=0", "/ui/static/style.css"} {
		if r, body := webGet(t, srv, path, c, ""); r.StatusCode != 200 {
			t.Errorf("GET %s with the cookie: %s %s", path, r.Status, body)
		}
	}
	if _, body := webGet(t, srv, "/ui/api/jobs", c, ""); !strings.Contains(body, `"backup"`) || !strings.Contains(body, "disk full") {
		t.Errorf("jobs JSON lacks the job or its last runs: %s", body)
	}
	if _, body := webGet(t, srv, "/ui/api/logs?service=web&slot=0&follow=1", c, ""); body != "GET / 200\nGET /health 200\n" {
		t.Errorf("log tail %q", body)
	}
}

// TestWebLoginWrongToken: a wrong token gets the login page again, 401,
// and no cookie.
func TestWebLoginWrongToken(t *testing.T) {
	srv := newWebServer(t, newWebView())
	for _, token := range []string{"wrong", "", "s3cret "} {
		resp := webLogin(t, srv, token)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), `name="token"`) ||
			!strings.Contains(string(body), "wrong token") {
			t.Errorf("token %q: %s, want 401 and the login page again", token, resp.Status)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("token %q: cookies %v set", token, resp.Cookies())
		}
	}
}

// TestWebNoCookie: without a cookie a page redirects to the login and its
// JSON answers 401; a forged cookie (the token itself) is no better. The
// API's bearer token opens the pages too.
func TestWebNoCookie(t *testing.T) {
	srv := newWebServer(t, newWebView())
	for _, c := range []*http.Cookie{nil, {Name: webCookie, Value: "s3cret"}, {Name: webCookie, Value: webSession("other")}} {
		if r, _ := webGet(t, srv, "/ui/", c, ""); r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/login" {
			t.Errorf("GET /ui/ with cookie %v: %s to %q, want 303 to /login", c, r.Status, r.Header.Get("Location"))
		}
		if r, _ := webGet(t, srv, "/ui/api/fleet", c, ""); r.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET /ui/api/fleet with cookie %v: %s, want 401", c, r.Status)
		}
	}
	if r, _ := webGet(t, srv, "/ui/api/fleet", nil, "Bearer s3cret"); r.StatusCode != 200 {
		t.Errorf("GET /ui/api/fleet with the bearer token: %s", r.Status)
	}
	if r, _ := webGet(t, srv, "/", nil, ""); r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /: %s to %q, want 303 to /ui/", r.Status, r.Header.Get("Location"))
	}
}

// TestWebCookieNotForAPI: the session cookie opens the web view only;
// every other route of the API still wants the token.
func TestWebCookieNotForAPI(t *testing.T) {
	srv := newWebServer(t, newWebView())
	c := &http.Cookie{Name: webCookie, Value: webSession("s3cret")}
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/status"}, {"GET", "/v1/fleet"}, {"GET", "/v1/records"}, {"GET", "/v1/keyring"},
		{"POST", "/v1/keyring/install"}, {"GET", "/v1/logs?service=web&slot=0"}, {"GET", "/metrics"},
		{"POST", "/v1/webhook"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(`{"key":"x"}`))
		req.AddCookie(c)
		resp, err := noRedirects.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("%s %s with only the web cookie: %s, want refused", tc.method, tc.path, resp.Status)
		}
		if tc.path != "/v1/webhook" && resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with only the web cookie: %s, want 401", tc.method, tc.path, resp.Status)
		}
	}
}

// TestWebFleetDoc: capacity used comes from the desired slots and the
// services' resources, rollout progress from the records' definitions,
// errors from this node's instances and the unplaced slots.
func TestWebFleetDoc(t *testing.T) {
	v := newWebView()
	v.instances = append(v.instances, shoal.Instance{Slot: shoal.Slot{Service: "web", Index: 1}, Node: "n1",
		Image: "nginx:nope", State: shoal.StateStarting, LastError: "pull failed: nginx:nope: not found"})
	v.fleet.Unplaced = []unplacedSlot{{Service: "redis", Slot: 1, Reason: "no node has 1 cpu free"}}
	v.fleet.Members[2].Revision = "0000000000000000000000000000000000000000"
	doc := fleetDoc(v.Fleet(), v.Records(), v.Status().Instances, v.specs)
	type nodeRow struct {
		name    string
		slots   int
		cpu     float64
		mem     shoal.Bytes
		current bool
	}
	var nodes []nodeRow
	for _, n := range doc.Nodes {
		nodes = append(nodes, nodeRow{n.Name, n.Slots, n.UsedCPU, n.UsedMemory, n.Current})
	}
	want := []nodeRow{{"n1", 1, 0.5, 256 << 20, true}, {"n2", 2, 1.5, 256<<20 + 1<<30, true}, {"n3", 1, 0.5, 256 << 20, false}}
	if !reflect.DeepEqual(nodes, want) {
		t.Errorf("nodes %+v, want %+v", nodes, want)
	}
	byName := map[string]webService{}
	for _, s := range doc.Services {
		byName[s.Name] = s
	}
	if w := byName["web"]; w.New != 1 || w.NewHealthy != 1 || w.Spec != "aaaa1111" ||
		!reflect.DeepEqual(w.Errors, []string{"n1 slot 1: pull failed: nginx:nope: not found"}) {
		t.Errorf("web: new %d, healthy new %d, spec %s, errors %q", w.New, w.NewHealthy, w.Spec, w.Errors)
	}
	if r := byName["redis"]; r.New != 1 || !reflect.DeepEqual(r.Errors, []string{"slot 1: unplaced: no node has 1 cpu free"}) {
		t.Errorf("redis: new %d, errors %q", r.New, r.Errors)
	}
	b, _ := json.Marshal(doc)
	if !strings.Contains(string(b), `"used_memory":1342177280`) {
		t.Errorf("JSON lacks n2's used memory: %s", b)
	}
}

// TestWebBrowser drives the web view in a real headless Chromium: the
// login refuses a wrong token and takes the right one, the fleet page
// shows the nodes and services, follows the fleet live (a node joins, a
// rollout moves on, a pull fails), and the service page shows its slots
// and log tail, the jobs page the next tick and the last runs. Screenshots are kept in the test's temp dir, and also in
// $SHOAL_WEB_SCREENSHOTS when set (docs/web-view.png is its fleet.png).
func TestWebBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: scripts/install-deps installs it")
	}
	v := newWebView()
	srv := newWebServer(t, v)
	// The whole browser lives at most this long; each step below has a
	// deadline of its own. A page that never shows what it should fails
	// the test, it never hangs it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1280, 900), chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("disable-dev-shm-usage", true)) // containers often have a tiny /dev/shm
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	if err := chromedp.Do(bctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	dir := t.TempDir()
	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, 20*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, steps...); err != nil {
			tctx, cancel := context.WithTimeout(bctx, 5*time.Second)
			defer cancel()
			body, _ := chromedp.Run(tctx, chromedp.Text(chromedp.CSS("body")))
			t.Fatalf("%s: %v\npage:\n%s", what, err, body)
		}
	}
	// text waits until the element sel holds want.
	text := func(sel, want string) chromedp.Action[chromedp.Void] {
		js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); return !!e && e.innerText.includes(%q); })()`, sel, want)
		return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))
	}
	visible := func(sel string) chromedp.Action[chromedp.Void] { return chromedp.WaitVisible(chromedp.CSS(sel)) }
	shot := func(name string) {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, 20*time.Second)
		defer cancel()
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
		if keep := os.Getenv("SHOAL_WEB_SCREENSHOTS"); keep != "" {
			if err := os.WriteFile(filepath.Join(keep, name), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("screenshot %s: %d bytes", filepath.Join(dir, name), len(png))
	}

	step("open /ui/ and land on the login",
		chromedp.Navigate(srv.URL+"/ui/"),
		visible(`input[name="token"]`))
	step("a wrong token is refused",
		chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), "not-the-token"),
		chromedp.Submit(chromedp.CSS(`input[name="token"]`)),
		visible(`#login-error`),
		text("#login-error", "wrong token"))
	shot("login-refused.png")
	step("the right token opens the fleet",
		chromedp.SendKeys(chromedp.CSS(`input[name="token"]`), "s3cret"),
		chromedp.Submit(chromedp.CSS(`input[name="token"]`)),
		visible(`tr[data-node="n3"]`),
		text(`tr[data-service="web"]`, "3/3 healthy"),
		text(`tr[data-service="web"]`, "1/3 new"),
		text(`tr[data-service="redis"]`, "redis:7"),
		text(`tr[data-node="n2"]`, "zone=b"),
		text(`tr[data-node="n2"]`, "1.5 cpu / 4 cpu"))

	// The fleet moves: a node joins, slot 1 rolls to the new definition,
	// and slot 2's new image cannot be pulled on this node.
	v.update(func(v *webView) {
		v.fleet.Members = append(v.fleet.Members, memberView{Name: "n4", Addr: "10.0.0.4", Status: "alive", Revision: webRev,
			CPU: 2, Memory: 4 << 30, Labels: map[string]string{"zone": "b"}})
		v.records[1].Spec = "aaaa1111"
		v.instances = append(v.instances, shoal.Instance{Slot: shoal.Slot{Service: "web", Index: 2}, Node: "n1", Image: "nginx:1.27",
			State: shoal.StateStarting, LastError: "pull failed: docker.io/library/nginx:1.27: not found"})
	})
	step("the page follows the fleet live",
		visible(`tr[data-node="n4"]`),
		text(`tr[data-service="web"]`, "2/3 new"),
		text(`tr[data-service="web"] td.errs`, "pull failed: docker.io/library/nginx:1.27: not found"))
	shot("fleet.png")

	step("the service page shows its slots and log tail",
		chromedp.Click(chromedp.CSS(`tr[data-service="web"] a`)),
		visible(`table.records`),
		text(`table.records`, "10.0.0.3:20002"),
		text(`#service-errors`, "not found"),
		text(`#logs`, "GET /health 200"))
	shot("service.png")

	step("the jobs page shows the next tick and the last runs",
		chromedp.Click(chromedp.CSS(`header nav a[href="/ui/jobs"]`)),
		visible(`table.runs`),
		text(`table.jobs`, "backup"),
		text(`table.jobs`, "in "),
		text(`table.runs`, "exited 3"),
		text(`table.runs`, "disk full"))
	shot("jobs.png")

	step("a phone-sized screen",
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Navigate(srv.URL+"/ui/"),
		visible(`tr[data-node="n4"]`))
	shot("fleet-phone.png")
}
