package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
	"github.com/shoal-run/shoal/placement"
)

// jobsView is GET /v1/jobs: the jobs of the revision in force, the runs in
// progress fleet-wide (from run records), and this node's history.
type jobsView struct {
	Node    string    `json:"node"`
	Jobs    []jobView `json:"jobs"`
	History []jobRun  `json:"history"`
}

type jobView struct {
	Name        string          `json:"name"`
	Schedule    string          `json:"schedule"`
	Concurrency string          `json:"concurrency"`
	Next        time.Time       `json:"next,omitzero"`
	Resources   shoal.Resources `json:"resources"`
	Running     []runningRun    `json:"running"`
}

type runningRun struct {
	Node   string    `json:"node"`
	Tick   time.Time `json:"tick"`
	Manual bool      `json:"manual,omitempty"`
}

// triggered is POST /v1/jobs/run's answer: the run and where it goes.
type triggered struct {
	Job  string    `json:"job"`
	Tick time.Time `json:"tick"`
	Node string    `json:"node"`
}

var errNoJob = errors.New("no such job in the revision in force")

// jobsView implements GET /v1/jobs.
func (a *agent) jobsView(name string, now time.Time) jobsView {
	a.mu.Lock()
	rev := a.rev
	v := jobsView{Node: a.cfg.NodeName, Jobs: []jobView{}, History: a.jobs.history(name)}
	a.mu.Unlock()
	if rev == nil {
		return v
	}
	running := map[string][]runningRun{}
	for _, r := range a.mesh.Records() {
		if rr, ok := node.ParseRunRecord(r); ok && rr.Kind != node.KindDone {
			running[rr.Job] = append(running[rr.Job], runningRun{Node: rr.Node, Tick: rr.Tick, Manual: rr.Kind == node.KindManual})
		}
	}
	for _, j := range rev.Spec.Jobs {
		if name != "" && j.Name != name {
			continue
		}
		jv := jobView{Name: j.Name, Schedule: j.Schedule, Concurrency: string(j.Concurrency), Resources: j.Resources, Running: running[j.Name]}
		if jv.Running == nil {
			jv.Running = []runningRun{}
		}
		if s, err := shoal.ParseSchedule(j.Schedule); err == nil {
			jv.Next = node.NextTick(s, now).UTC()
		}
		v.Jobs = append(v.Jobs, jv)
	}
	return v
}

// trigger implements POST /v1/jobs/run: the run goes to the first live
// node in rank for (job, tick), as a scheduled tick would; this node
// forwards the request there, or queues it for its next step.
func (a *agent) trigger(name string, tick time.Time, here bool) (triggered, error) {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	if rev == nil || rev.Spec.Job(name) == nil {
		return triggered{}, fmt.Errorf("%s: %w", name, errNoJob)
	}
	t := triggered{Job: name, Tick: tick.Truncate(time.Second).UTC(), Node: a.cfg.NodeName}
	if !here {
		members := a.mesh.Members()
		var live []shoal.Node
		for _, m := range members {
			if m.Status == "alive" {
				live = append(live, m.Node)
			}
		}
		rank := placement.RunnerRank(rev.Spec.Job(name), t.Tick, live)
		if len(rank) == 0 {
			return t, fmt.Errorf("%s: no live node matches its constraints", name)
		}
		t.Node = rank[0]
		if t.Node != a.cfg.NodeName {
			for _, m := range members {
				if m.Node.Name == t.Node && m.APIPort > 0 {
					c := newAPIClient(joinHostPort(m.Addr, m.APIPort), a.cfg.APIToken)
					var got triggered
					err := c.postJSON("/v1/jobs/run?"+url.Values{"job": {name}, "tick": {strconv.FormatInt(t.Tick.Unix(), 10)}, "here": {"1"}}.Encode(), &got)
					if err != nil {
						return t, fmt.Errorf("hand the run to %s: %w", t.Node, err)
					}
					return got, nil
				}
			}
			return t, fmt.Errorf("hand the run to %s: its API address is unknown", t.Node)
		}
	}
	a.mu.Lock()
	a.jobs.triggers = append(a.jobs.triggers, node.Trigger{Job: name, Tick: t.Tick})
	a.mu.Unlock()
	a.wake()
	return t, nil
}

// jobsHandler serves /v1/jobs and /v1/jobs/run.
func (a *agent) jobsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.jobsView(r.URL.Query().Get("job"), time.Now()))
	})
	mux.HandleFunc("POST /v1/jobs/run", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		tick := time.Now()
		if s := q.Get("tick"); s != "" {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				http.Error(w, "tick: want a Unix time", http.StatusBadRequest)
				return
			}
			tick = time.Unix(n, 0)
		}
		t, err := a.trigger(q.Get("job"), tick, q.Get("here") == "1")
		switch {
		case errors.Is(err, errNoJob):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadGateway)
		default:
			writeJSON(w, t)
		}
	})
	return mux
}

func (c *apiClient) postJSON(path string, out any) error {
	req, err := http.NewRequest(http.MethodPost, c.base+path, nil)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("agent %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent %s: POST %s: %s: %s", c.base, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent %s: decode %s: %w", c.base, path, err)
	}
	return nil
}

func init() {
	register(command{name: "jobs", usage: "cron jobs and their runs fleet-wide: shoal jobs [NAME] | shoal jobs run NAME", run: runJobs})
}

// fleetJobs reads the jobs from one agent and every live member's history.
func fleetJobs(cf clientFlags, name string) (jobsView, error) {
	c := cf.client()
	q := ""
	if name != "" {
		q = "?" + url.Values{"job": {name}}.Encode()
	}
	var v jobsView
	if err := c.getJSON("/v1/jobs"+q, &v); err != nil {
		return v, err
	}
	var members []memberView
	if err := c.getJSON("/v1/members", &members); err != nil {
		return v, err
	}
	for _, m := range members {
		if m.Name == v.Node || m.Status != "alive" || m.APIPort == 0 {
			continue
		}
		var peer jobsView
		if err := newAPIClient(joinHostPort(m.Addr, m.APIPort), cf.token).getJSON("/v1/jobs"+q, &peer); err != nil {
			return v, fmt.Errorf("history of %s: %w", m.Name, err)
		}
		v.History = append(v.History, peer.History...)
	}
	sortRuns(v.History)
	return v, nil
}

func runJobs(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cf clientFlags
	fs := newFlagSet("jobs", stderr)
	cf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	var pos []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	pos = append(pos, fs.Args()...)
	if err := cf.check(); err != nil {
		return 1, err
	}
	if len(pos) >= 1 && pos[0] == "run" {
		if len(pos) != 2 {
			return 1, fmt.Errorf("want a job name: shoal jobs run NAME")
		}
		var t triggered
		if err := cf.client().postJSON("/v1/jobs/run?"+url.Values{"job": {pos[1]}}.Encode(), &t); err != nil {
			return 1, err
		}
		fmt.Fprintf(stdout, "%s: run %d starts on %s\n", t.Job, t.Tick.Unix(), t.Node)
		return 0, nil
	}
	name := ""
	if len(pos) > 0 {
		name = pos[0]
	}
	v, err := fleetJobs(cf, name)
	if err != nil {
		return 1, err
	}
	if *asJSON {
		return 0, printJSON(stdout, v)
	}
	printJobs(stdout, v, name)
	return 0, nil
}

func printJobs(w io.Writer, v jobsView, name string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSCHEDULE\tCONCURRENCY\tNEXT\tRUNNING")
	for _, j := range v.Jobs {
		var run []string
		for _, r := range j.Running {
			run = append(run, fmt.Sprintf("%d@%s", r.Tick.Unix(), r.Node))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", j.Name, j.Schedule, j.Concurrency, j.Next.Format(time.RFC3339), strings.Join(run, ","))
	}
	tw.Flush()
	if name == "" && len(v.History) > 10 {
		v.History = v.History[:10] // the overview shows the latest; shoal jobs NAME shows all
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tRUN\tTICK\tNODE\tSTATE\tSTART\tEND\tEXIT\tREASON")
	for _, r := range v.History {
		tm := func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format("15:04:05")
		}
		exit := "-"
		if r.State == "ended" && r.Reason == string(node.ReasonExited) {
			exit = strconv.Itoa(r.ExitCode)
		}
		reason := r.Reason
		if r.Manual {
			reason = strings.TrimSpace(reason + " (manual)")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Job, r.Run, r.Tick.UTC().Format(time.RFC3339), r.Node, r.State, tm(r.Start), tm(r.End), exit, reason)
	}
	tw.Flush()
}

// jobLogs prints a job run's output: run is the run's number in `shoal
// jobs NAME` (its tick's Unix time), or 1 for the latest, 2 for the one
// before, and so on.
func jobLogs(ctx context.Context, cf clientFlags, job string, run int64, follow bool, stdout io.Writer) (int, error) {
	v, err := fleetJobs(cf, job)
	if err != nil {
		return 1, err
	}
	var runs []jobRun
	for _, r := range v.History {
		if r.State != "skipped" {
			runs = append(runs, r)
		}
	}
	var pick *jobRun
	for i := range runs {
		if runs[i].Run == run || (run < 1_000_000 && int64(i+1) == run) {
			pick = &runs[i]
			break
		}
	}
	if pick == nil {
		return 1, fmt.Errorf("no run %d of %s in the fleet's history (see shoal jobs %s)", run, job, job)
	}
	var members []memberView
	if err := cf.client().getJSON("/v1/members", &members); err != nil {
		return 1, err
	}
	target := cf.client()
	for _, m := range members {
		if m.Name == pick.Node && m.APIPort > 0 {
			target = newAPIClient(joinHostPort(m.Addr, m.APIPort), cf.token)
		}
	}
	q := url.Values{"service": {job}, "slot": {strconv.FormatInt(pick.Run, 10)}}
	if follow {
		q.Set("follow", "1")
	}
	resp, err := target.get("/v1/logs?" + q.Encode())
	if err != nil {
		return 1, err
	}
	defer resp.Body.Close()
	go func() { <-ctx.Done(); resp.Body.Close() }()
	if _, err := io.Copy(stdout, resp.Body); err != nil && ctx.Err() == nil {
		return 1, fmt.Errorf("read logs of %s run %d from %s: %w", job, pick.Run, pick.Node, err)
	}
	return 0, nil
}
