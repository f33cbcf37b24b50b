package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

// fixedJobs is one node's cron jobs for the API: its history, the runner
// it names for every manual run, and the runs triggered on it.
type fixedJobs struct {
	node    string
	runner  string
	history []jobRun
	mu      sync.Mutex
	fired   []string
}

func (j *fixedJobs) JobsView(name string, _ time.Time) jobsView {
	v := jobsView{Node: j.node, Jobs: []jobView{{Name: "report", Schedule: "@every 1m", Running: []runningRun{}}}, History: []jobRun{}}
	for _, r := range j.history {
		if name == "" || r.Job == name {
			v.History = append(v.History, r)
		}
	}
	return v
}

func (j *fixedJobs) Runner(name string, _ time.Time) (string, error) {
	if name != "report" {
		return "", errNoJob
	}
	return j.runner, nil
}

func (j *fixedJobs) Trigger(name string, tick time.Time) (triggered, error) {
	if name != "report" {
		return triggered{}, errNoJob
	}
	j.mu.Lock()
	j.fired = append(j.fired, name)
	j.mu.Unlock()
	return triggered{Job: name, Tick: tick, Node: j.node}, nil
}

// TestJobsThroughOneAgent: shoal jobs, shoal jobs run and shoal logs JOB
// --run talk to the --agent given only; that agent reads its peers'
// history, hands a run to its runner and fetches a run's output, showing
// each peer a hop token, never the fleet's token.
func TestJobsThroughOneAgent(t *testing.T) {
	noLocalToken(t)
	t0 := time.Unix(1772359200, 0).UTC()
	var sawAuth atomic.Value
	sawAuth.Store("")
	peerJobs := &fixedJobs{node: "n2", runner: "n2", history: []jobRun{
		{Job: "report", Tick: t0, Run: t0.Unix(), Node: "n2", State: "ended", Reason: "exited", ExitCode: 3},
		{Job: "report", Tick: t0.Add(time.Hour), Run: t0.Add(time.Hour).Unix(), Node: "n9", State: "ended", Reason: "exited"}, // not n2's to tell
	}}
	peerView := &fixedView{logs: map[string]string{shoal.Slot{Service: "report", Index: int(t0.Unix())}.String(): "report ran on n2\n"}}
	jobSlots := func(s shoal.Slot) bool { return s.Service == "report" && s.Index >= 0 }
	peerAPI := (&apiServer{view: peerView, token: "tok", self: "n2", slotExists: jobSlots, jobs: peerJobs}).handler()
	peer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			sawAuth.Store(a)
		}
		peerAPI.ServeHTTP(w, r)
	}))
	defer peer.Close()
	frontJobs := &fixedJobs{node: "n1", runner: "n2", history: []jobRun{
		{Job: "report", Tick: t0.Add(time.Minute), Run: t0.Add(time.Minute).Unix(), Node: "n1", State: "ended", Reason: "exited"},
	}}
	v := &fixedView{members: []memberView{
		{Name: "n1", Addr: "127.0.0.1", Status: "alive", APIPort: 1},
		{Name: "n2", Addr: "127.0.0.1", Status: "alive", APIPort: portOf(t, peer.URL)},
		{Name: "n3", Addr: "127.0.0.1", Status: "failed", APIPort: 1},
	}}
	front := httptest.NewServer((&apiServer{view: v, token: "tok", self: "n1", slotExists: jobSlots, jobs: frontJobs}).handler())
	defer front.Close()
	agent := strings.TrimPrefix(front.URL, "http://")

	code, out, errOut := runCLI(t, "jobs", "report", "--agent", agent, "--token", "tok")
	if code != 0 || !strings.Contains(out, "n1") || !strings.Contains(out, "n2") || strings.Contains(out, "n9") || errOut != "" {
		t.Fatalf("shoal jobs through n1: %d\n%s%s", code, out, errOut)
	}
	if strings.Index(out, "n1  ") > strings.Index(out, "  n2  ") {
		t.Errorf("history not newest first:\n%s", out)
	}

	code, out, errOut = runCLI(t, "jobs", "run", "report", "--agent", agent, "--token", "tok")
	if code != 0 || !strings.Contains(out, "starts on n2") || len(peerJobs.fired) != 1 || len(frontJobs.fired) != 0 {
		t.Fatalf("shoal jobs run through n1: %d %q %q; fired on n2 %v, on n1 %v", code, out, errOut, peerJobs.fired, frontJobs.fired)
	}

	code, out, errOut = runCLI(t, "logs", "report", "--run", "2", "--agent", agent, "--token", "tok")
	if code != 0 || out != "report ran on n2\n" {
		t.Fatalf("shoal logs report --run 2 through n1: %d %q %q", code, out, errOut)
	}
	if a := sawAuth.Load().(string); a != "" {
		t.Fatalf("a peer was shown the fleet token: %q", a)
	}

	// A hop token opens its own path on its own node only.
	for _, c := range []struct {
		method, path, tokenPath, node string
	}{
		{"GET", "/v1/jobs?hop=1", "/v1/logs", "n2"},
		{"GET", "/v1/jobs?hop=1", "/v1/jobs", "n3"},
		{"POST", "/v1/jobs/run?job=report&hop=1", "/v1/jobs", "n2"},
		{"GET", "/v1/status?hop=1", "/v1/jobs", "n2"},
	} {
		req, _ := http.NewRequest(c.method, peer.URL+c.path, nil)
		req.Header.Set(hopHeader, hopToken("tok", c.tokenPath, c.node))
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s with the hop token of %s on %s: %v %v", c.method, c.path, c.tokenPath, c.node, resp.StatusCode, err)
		}
	}
	req, _ := http.NewRequest("GET", peer.URL+"/v1/jobs?hop=1", nil)
	req.Header.Set(hopHeader, hopToken("tok", "/v1/jobs", "n2"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("n2's own jobs hop token refused: %v %v", resp.StatusCode, err)
	}

	// A peer that does not answer is named, and the rest still shown.
	peer.Close()
	code, out, errOut = runCLI(t, "jobs", "report", "--agent", agent, "--token", "tok")
	if code != 0 || !strings.Contains(out, "n1") || !strings.Contains(errOut, "lacks n2's runs") {
		t.Fatalf("shoal jobs with n2 down: %d\n%s%s", code, out, errOut)
	}
}
