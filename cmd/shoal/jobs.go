package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
	"github.com/shoal-run/shoal/placement"
)

// jobsView is GET /v1/jobs: the jobs of the revision in force, the runs in
// progress fleet-wide (from run records), and the history: fleet-wide as
// the agent asked gathers it from its peers, or one node's (hop=1).
type jobsView struct {
	Node    string    `json:"node"`
	Jobs    []jobView `json:"jobs"`
	History []jobRun  `json:"history"`
	// Unreachable are the alive members whose history could not be read,
	// with why: the history shown lacks their runs.
	Unreachable map[string]string `json:"unreachable,omitempty"`
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

// jobsBackend is what the API reads of the cron jobs and asks of them; the
// agent implements it. Reaching peers is the API's part (apiServer.hop).
type jobsBackend interface {
	// JobsView is the jobs named (all for ""), with this node's history.
	JobsView(name string, now time.Time) jobsView
	// Runner is the node that takes a manual run of name at tick.
	Runner(name string, tick time.Time) (string, error)
	// Trigger queues a run of name at tick on this node.
	Trigger(name string, tick time.Time) (triggered, error)
}

// JobsView implements jobsBackend.
func (a *agent) JobsView(name string, now time.Time) jobsView {
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

// Runner implements jobsBackend: a manual run goes to the first live node
// in rank for (job, tick), as a scheduled tick would.
func (a *agent) Runner(name string, tick time.Time) (string, error) {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	if rev == nil || rev.Spec.Job(name) == nil {
		return "", fmt.Errorf("%s: %w", name, errNoJob)
	}
	var live []shoal.Node
	for _, m := range a.mesh.Members() {
		if m.Status == "alive" {
			live = append(live, m.Node)
		}
	}
	rank := placement.RunnerRank(rev.Spec.Job(name), runTick(tick), live)
	if len(rank) == 0 {
		return "", fmt.Errorf("%s: no live node matches its constraints", name)
	}
	return rank[0], nil
}

// Trigger implements jobsBackend: the run is queued for the next step.
func (a *agent) Trigger(name string, tick time.Time) (triggered, error) {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	if rev == nil || rev.Spec.Job(name) == nil {
		return triggered{}, fmt.Errorf("%s: %w", name, errNoJob)
	}
	t := triggered{Job: name, Tick: runTick(tick), Node: a.cfg.NodeName}
	a.mu.Lock()
	a.jobs.triggers = append(a.jobs.triggers, node.Trigger{Job: name, Tick: t.Tick})
	a.mu.Unlock()
	a.wake()
	return t, nil
}

// runTick is a manual run's tick: whole seconds, as its slot index is.
func runTick(t time.Time) time.Time { return t.Truncate(time.Second).UTC() }

// maxPeerJobsBytes bounds a peer's answer to /v1/jobs.
const maxPeerJobsBytes = 16 << 20

// serveJobs is GET /v1/jobs[?job=NAME]: the jobs, and the history of
// every alive member, which this agent asks for itself (hop), so the CLI
// talks to one agent only. With hop=1, this node's history alone.
func (a *apiServer) serveJobs(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("job")
	v := a.jobs.JobsView(name, time.Now())
	if r.URL.Query().Get("hop") != "1" {
		a.gatherJobs(r.Context(), &v, name)
	}
	sortRuns(v.History)
	writeJSON(w, v)
}

// gatherJobs adds every other alive member's history to v, asked at once.
// A member speaks for its own runs only; one that does not answer is
// named in v.Unreachable.
func (a *apiServer) gatherJobs(ctx context.Context, v *jobsView, name string) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	q := url.Values{}
	if name != "" {
		q.Set("job", name)
	}
	type answer struct {
		node string
		runs []jobRun
		err  error
	}
	answers := make(chan answer)
	n := 0
	for _, m := range a.view.Members() {
		if m.Name == a.self || m.Status != "alive" || m.APIPort == 0 {
			continue
		}
		n++
		go func() {
			var peer jobsView
			err := a.hopJSON(ctx, http.MethodGet, m, "/v1/jobs", maps.Clone(q), maxPeerJobsBytes, &peer)
			answers <- answer{m.Name, peer.History, err}
		}()
	}
	for range n {
		ans := <-answers
		if ans.err != nil {
			if v.Unreachable == nil {
				v.Unreachable = map[string]string{}
			}
			v.Unreachable[ans.node] = ans.err.Error()
			continue
		}
		for _, run := range ans.runs {
			if run.Node == ans.node {
				v.History = append(v.History, run)
			}
		}
	}
}

// hopJSON makes a hop request of a peer and decodes its JSON answer.
func (a *apiServer) hopJSON(ctx context.Context, method string, node memberView, path string, q url.Values, limit int64, out any) error {
	resp, err := a.hop(ctx, method, node, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, limit)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode: %w", method, path, err)
	}
	return nil
}

// serveJobRun is POST /v1/jobs/run?job=NAME[&tick=UNIX]: one run now, on
// the node the rule picks; this agent hands it there (hop), or queues it
// when that is this node. With hop=1, the run is this node's.
func (a *apiServer) serveJobRun(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("job")
	tick := time.Now()
	if s := q.Get("tick"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			http.Error(w, "tick: want a Unix time", http.StatusBadRequest)
			return
		}
		tick = time.Unix(n, 0)
	}
	tick = runTick(tick)
	node := a.self
	if q.Get("hop") != "1" {
		var err error
		if node, err = a.jobs.Runner(name, tick); err != nil {
			jobError(w, err)
			return
		}
	}
	if node == a.self {
		t, err := a.jobs.Trigger(name, tick)
		if err != nil {
			jobError(w, err)
			return
		}
		writeJSON(w, t)
		return
	}
	m, ok := a.member(node)
	if !ok {
		http.Error(w, fmt.Sprintf("hand the run to %s: it is not an alive member with an API", node), http.StatusBadGateway)
		return
	}
	var t triggered
	fwd := url.Values{"job": {name}, "tick": {strconv.FormatInt(tick.Unix(), 10)}}
	if err := a.hopJSON(r.Context(), http.MethodPost, m, "/v1/jobs/run", fwd, 1<<20, &t); err != nil {
		http.Error(w, fmt.Sprintf("hand the run to %s: %v", node, err), http.StatusBadGateway)
		return
	}
	writeJSON(w, t)
}

func jobError(w http.ResponseWriter, err error) {
	if errors.Is(err, errNoJob) {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	http.Error(w, err.Error(), http.StatusBadGateway)
}

func init() {
	register(command{name: "jobs", usage: "cron jobs and their runs fleet-wide: shoal jobs [NAME] | shoal jobs run NAME", run: runJobs})
}

// fleetJobs reads the jobs and the fleet's history from the agent given
// by --agent, which gathers it from its peers: the CLI's token goes
// nowhere else.
func fleetJobs(cf clientFlags, name string, stderr io.Writer) (jobsView, error) {
	q := ""
	if name != "" {
		q = "?" + url.Values{"job": {name}}.Encode()
	}
	var v jobsView
	if err := cf.client().getJSON("/v1/jobs"+q, &v); err != nil {
		return v, err
	}
	nodes := slices.Sorted(maps.Keys(v.Unreachable))
	for _, n := range nodes {
		fmt.Fprintf(stderr, "warning: the history lacks %s's runs: %s\n", n, v.Unreachable[n])
	}
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
		path := "/v1/jobs/run?" + url.Values{"job": {pos[1]}}.Encode()
		code, err := cf.client().postJSON(path, nil, &t)
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("agent %s: POST %s: status %d", cf.agent, path, code)
		}
		if err != nil {
			return 1, err
		}
		fmt.Fprintf(stdout, "%s: run %d starts on %s\n", t.Job, t.Tick.Unix(), t.Node)
		return 0, nil
	}
	name := ""
	if len(pos) > 0 {
		name = pos[0]
	}
	v, err := fleetJobs(cf, name, stderr)
	if err != nil {
		return 1, err
	}
	if *asJSON || cf.output == "json" {
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
// before, and so on. The agent given by --agent finds the run in the
// fleet's history and fetches its output from the node that ran it.
func jobLogs(ctx context.Context, cf clientFlags, job string, run int64, follow bool, stdout, stderr io.Writer) (int, error) {
	v, err := fleetJobs(cf, job, stderr)
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
	q := url.Values{"service": {job}, "slot": {strconv.FormatInt(pick.Run, 10)}, "node": {pick.Node}}
	if err := streamLogs(ctx, cf, q, follow, stdout); err != nil {
		return 1, fmt.Errorf("logs of %s run %d from %s: %w", job, pick.Run, pick.Node, err)
	}
	return 0, nil
}
