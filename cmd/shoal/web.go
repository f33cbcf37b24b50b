package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	"github.com/shoal-run/shoal"
)

// The web view: every agent serves it on its API address, behind the
// same token. A person posts the token once to /login and gets a cookie
// that holds an HMAC of it (never the token); the cookie opens the pages
// under /ui/ and the JSON they poll, nothing else of the API. The pages
// are rendered by a little plain JavaScript from that JSON, every two
// seconds; the first document comes embedded in the page.

//go:embed web
var webFiles embed.FS

var webTemplates = template.Must(template.ParseFS(webFiles, "web/*.html"))

// webCookie is the cookie the login sets.
const webCookie = "shoal_session"

// webSession is the cookie's value for token: an HMAC of it, so the
// cookie is good for the web view only and leaks no API token.
func webSession(token string) string {
	mac := hmac.New(sha256.New, []byte(token))
	mac.Write([]byte("shoal web session"))
	return hex.EncodeToString(mac.Sum(nil))
}

// specSource is what the web view reads of the revision in force beyond the
// API's documents: each service's definition and resources, for rollout
// progress and capacity used. The agent implements it; without it the
// view shows neither.
type specSource interface {
	WebServices() map[string]webServiceSpec
}

type webServiceSpec struct {
	Image     string
	Spec      string // short definition hash, as records carry it
	Resources shoal.Resources
}

var _ specSource = (*agent)(nil)

// WebServices implements specSource.
func (a *agent) WebServices() map[string]webServiceSpec {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	out := map[string]webServiceSpec{}
	if rev == nil {
		return out
	}
	for i := range rev.Spec.Services {
		s := &rev.Spec.Services[i]
		out[s.Name] = webServiceSpec{Image: s.Image, Spec: shoal.ShortSpec(s.Hash()), Resources: s.Resources}
	}
	return out
}

// mountWeb adds the web view's routes to root: /login, /ui/ and / (a
// redirect to /ui/).
func (a *apiServer) mountWeb(root *http.ServeMux) {
	ui := http.NewServeMux()
	ui.HandleFunc("GET /ui/{$}", a.webPage("fleet"))
	ui.HandleFunc("GET /ui/services/{name}", a.webPage("service"))
	ui.HandleFunc("GET /ui/jobs", a.webPage("jobs"))
	ui.HandleFunc("GET /ui/api/fleet", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, a.webFleet()) })
	ui.HandleFunc("GET /ui/api/services/{name}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.webService(r.PathValue("name")))
	})
	ui.HandleFunc("GET /ui/api/jobs", a.webJobs)
	ui.HandleFunc("GET /ui/api/logs", a.webLogs)
	ui.HandleFunc("POST /ui/logout", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: webCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	})
	static, _ := fs.Sub(webFiles, "web/static")
	root.Handle("GET /ui/static/", webHeaders(http.StripPrefix("/ui/static/", http.FileServerFS(static))))
	root.Handle("/ui/", webHeaders(a.webAuth(ui)))
	root.Handle("GET /login", webHeaders(http.HandlerFunc(a.webLogin)))
	root.Handle("POST /login", webHeaders(http.HandlerFunc(a.webLogin)))
	root.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusSeeOther))
}

// webHeaders keeps the pages to their own scripts and styles and out of
// other sites' frames.
func webHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// webAuth lets through a request with the session cookie or the API's
// bearer token. Without either, a page redirects to the login and the
// JSON answers 401.
func (a *apiServer) webAuth(next http.Handler) http.Handler {
	want := []byte(webSession(a.token))
	bearer := []byte("Bearer " + a.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := false
		if a.token != "" {
			if c, err := r.Cookie(webCookie); err == nil {
				ok = subtle.ConstantTimeCompare([]byte(c.Value), want) == 1
			}
			ok = ok || subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), bearer) == 1
		}
		if !ok {
			if r.Method == http.MethodGet && !isWebAPI(r.URL.Path) {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "log in at /login", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isWebAPI(path string) bool {
	return len(path) >= len("/ui/api/") && path[:len("/ui/api/")] == "/ui/api/"
}

// webLogin shows the login form, or checks the token posted and sets the
// session cookie. A wrong token gets the form again, refused.
func (a *apiServer) webLogin(w http.ResponseWriter, r *http.Request) {
	data := struct{ Error string }{}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 4096)
		got := r.PostFormValue("token")
		if a.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) == 1 {
			http.SetCookie(w, &http.Cookie{Name: webCookie, Value: webSession(a.token), Path: "/",
				HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 7 * 24 * 3600})
			http.Redirect(w, r, "/ui/", http.StatusSeeOther)
			return
		}
		if a.log != nil {
			a.log.Warn("web view: login refused", "remote", r.RemoteAddr)
		}
		data.Error = "wrong token"
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
	}
	webTemplates.ExecuteTemplate(w, "login.html", data)
}

// webPage renders the page named, with the JSON it polls embedded.
func (a *apiServer) webPage(page string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		data := struct {
			Page, Title, Node, Poll string
			Data                    any
		}{Page: page, Title: page, Node: a.self}
		switch page {
		case "fleet":
			data.Poll, data.Data = "/ui/api/fleet", a.webFleet()
		case "service":
			name := r.PathValue("name")
			data.Title = name
			data.Poll, data.Data = "/ui/api/services/"+url.PathEscape(name), a.webService(name)
		case "jobs":
			data.Poll = "/ui/api/jobs" // fetched at once: it asks every peer
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		webTemplates.ExecuteTemplate(w, "page.html", data)
	}
}

// webFleetDoc is /ui/api/fleet: the nodes and services as the pages show
// them.
type webFleetDoc struct {
	Node     string         `json:"node"`
	Revision string         `json:"revision"`
	Nodes    []webNode      `json:"nodes"`
	Services []webService   `json:"services"`
	Unplaced []unplacedSlot `json:"unplaced"`
	Errors   []string       `json:"errors"`
}

type webNode struct {
	memberView
	Slots      int         `json:"slots"`
	UsedCPU    float64     `json:"used_cpu"`
	UsedMemory shoal.Bytes `json:"used_memory"`
	Current    bool        `json:"current"` // at the answering node's revision
}

type webService struct {
	serviceStatus
	Image string `json:"image,omitempty"`
	Spec  string `json:"spec,omitempty"`
	// New and NewHealthy count the slots whose records carry the newest
	// definition: the rollout's progress.
	New        int      `json:"new"`
	NewHealthy int      `json:"new_healthy"`
	Errors     []string `json:"errors"`
}

func (a *apiServer) specs() map[string]webServiceSpec {
	if s, ok := a.view.(specSource); ok {
		return s.WebServices()
	}
	return nil
}

func (a *apiServer) webFleet() webFleetDoc {
	return fleetDoc(a.view.Fleet(), a.view.Records(), a.view.Status().Instances, a.specs())
}

// fleetDoc joins the fleet summary, the records, this node's instances
// and the spec into what the pages show. Pure: the counting is tested on
// its own.
func fleetDoc(f fleetStatus, records []shoal.Record, local []shoal.Instance, specs map[string]webServiceSpec) webFleetDoc {
	doc := webFleetDoc{Node: f.Node, Revision: f.Revision, Unplaced: f.Unplaced, Errors: f.Errors,
		Nodes: []webNode{}, Services: []webService{}}
	if doc.Unplaced == nil {
		doc.Unplaced = []unplacedSlot{}
	}
	if doc.Errors == nil {
		doc.Errors = []string{}
	}
	byNode := map[string]*webNode{}
	for _, m := range f.Members {
		doc.Nodes = append(doc.Nodes, webNode{memberView: m, Current: m.Revision == f.Revision})
	}
	sort.Slice(doc.Nodes, func(i, j int) bool { return doc.Nodes[i].Name < doc.Nodes[j].Name })
	for i := range doc.Nodes {
		byNode[doc.Nodes[i].Name] = &doc.Nodes[i]
	}
	for _, s := range f.Services {
		sp := specs[s.Name]
		ws := webService{serviceStatus: s, Image: sp.Image, Spec: sp.Spec, Errors: []string{}}
		for _, sn := range s.Nodes {
			if n := byNode[sn.Node]; n != nil {
				n.Slots += sn.Desired
				n.UsedCPU += float64(sn.Desired) * sp.Resources.CPU
				n.UsedMemory += shoal.Bytes(sn.Desired) * sp.Resources.Memory
			}
		}
		if sp.Spec != "" {
			seen := map[int]bool{}
			healthy := map[int]bool{}
			for _, r := range records {
				if r.Service == s.Name && r.Spec == sp.Spec {
					seen[r.Slot] = true
					healthy[r.Slot] = healthy[r.Slot] || r.Healthy
				}
			}
			ws.New = len(seen)
			for _, h := range healthy {
				if h {
					ws.NewHealthy++
				}
			}
		}
		for _, in := range local {
			if in.Service == s.Name {
				ws.Errors = append(ws.Errors, instanceErrors(in)...)
			}
		}
		for _, u := range f.Unplaced {
			if u.Service == s.Name {
				ws.Errors = append(ws.Errors, "slot "+strconv.Itoa(u.Slot)+": unplaced: "+u.Reason)
			}
		}
		sort.Strings(ws.Errors)
		doc.Services = append(doc.Services, ws)
	}
	return doc
}

// instanceErrors is what is wrong with a local instance, if anything.
func instanceErrors(in shoal.Instance) []string {
	where := in.Node + " slot " + strconv.Itoa(in.Index)
	var out []string
	if in.LastError != "" {
		out = append(out, where+": "+in.LastError)
	}
	switch in.State {
	case shoal.StateCrashLoop, shoal.StateUnhealthy:
		out = append(out, where+": "+string(in.State)+" after "+strconv.Itoa(in.Restarts)+" restarts")
	}
	return out
}

// webServiceDoc is /ui/api/services/{name}: one service, its records
// fleet-wide and its instances on this node.
type webServiceDoc struct {
	Found     bool             `json:"found"`
	Service   webService       `json:"service"`
	Records   []webRecord      `json:"records"`
	Instances []shoal.Instance `json:"instances"`
}

type webRecord struct {
	Node    string `json:"node"`
	Slot    int    `json:"slot"`
	Addr    string `json:"addr"`
	Spec    string `json:"spec"`
	New     bool   `json:"new"`
	Healthy bool   `json:"healthy"`
}

func (a *apiServer) webService(name string) webServiceDoc {
	records := a.view.Records()
	local := a.view.Status().Instances
	f := fleetDoc(a.view.Fleet(), records, local, a.specs())
	doc := webServiceDoc{Records: []webRecord{}, Instances: []shoal.Instance{}}
	for _, s := range f.Services {
		if s.Name == name {
			doc.Found, doc.Service = true, s
		}
	}
	seen := map[string]bool{}
	for _, r := range records {
		id := r.Node + "/" + strconv.Itoa(r.Slot)
		if r.Service != name || seen[id] {
			continue
		}
		seen[id] = true
		doc.Records = append(doc.Records, webRecord{Node: r.Node, Slot: r.Slot, Addr: joinHostPort(r.Addr, r.Port),
			Spec: r.Spec, New: r.Spec != "" && r.Spec == doc.Service.Spec, Healthy: r.Healthy})
	}
	sort.Slice(doc.Records, func(i, j int) bool {
		if doc.Records[i].Slot != doc.Records[j].Slot {
			return doc.Records[i].Slot < doc.Records[j].Slot
		}
		return doc.Records[i].Node < doc.Records[j].Node
	})
	for _, in := range local {
		if in.Service == name {
			doc.Instances = append(doc.Instances, in)
		}
	}
	sort.Slice(doc.Instances, func(i, j int) bool { return doc.Instances[i].Index < doc.Instances[j].Index })
	return doc
}

// webJobs is /ui/api/jobs: the API's /v1/jobs, or no jobs on an agent
// without them.
func (a *apiServer) webJobs(w http.ResponseWriter, r *http.Request) {
	if a.jobs == nil {
		writeJSON(w, jobsView{Node: a.self, Jobs: []jobView{}, History: []jobRun{}})
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = ""
	a.serveJobs(w, r2)
}

// webLogs is /ui/api/logs: the API's /v1/logs for one slot, never
// followed (the page polls it).
func (a *apiServer) webLogs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	r2 := r.Clone(r.Context())
	r2.URL.RawQuery = url.Values{"service": {q.Get("service")}, "slot": {q.Get("slot")}}.Encode()
	a.serveLogs(w, r2)
}
