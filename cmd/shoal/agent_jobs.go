package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/node"
	"github.com/shoal-run/shoal/placement"
	"github.com/shoal-run/shoal/runtime"
)

// historyLen is how many runs (and skipped ticks) of each job a node keeps,
// with their logs: older entries and their log files are deleted.
const historyLen = 20

// jobRun is one history entry: a run on this node, or a tick it skipped.
type jobRun struct {
	Job      string    `json:"job"`
	Tick     time.Time `json:"tick"`
	Run      int64     `json:"run"` // the tick's Unix time: the run's slot index, for shoal logs --run
	Node     string    `json:"node"`
	Manual   bool      `json:"manual,omitempty"`
	State    string    `json:"state"` // running, ended, skipped
	Start    time.Time `json:"start,omitzero"`
	End      time.Time `json:"end,omitzero"`
	ExitCode int       `json:"exit_code"`
	Reason   string    `json:"reason,omitempty"`
	Detail   string    `json:"detail,omitempty"`
}

// Succeeded reports whether the run ended with its process exiting 0.
func (r jobRun) Succeeded() bool {
	return r.State == "ended" && r.Reason == string(node.ReasonExited) && r.ExitCode == 0
}

// outcome names how an entry ended, for /metrics.
func (r jobRun) outcome() string {
	switch {
	case r.State == "skipped":
		return "skipped_" + r.Reason
	case r.Succeeded():
		return "succeeded"
	case r.Reason == string(node.ReasonExited):
		return "failed"
	}
	return r.Reason
}

// jobState drives node.StepCron for the agent: it keeps the cron state
// between steps, the history on disk (one JSON file per job under dir),
// and the manual triggers waiting for the next step. Its methods are
// called with the agent's lock held.
type jobState struct {
	self   string
	addr   string // this node's advertised address, which run records carry
	dir    string // history files
	logDir string // the runtime's log files
	log    *slog.Logger
	since  time.Time

	loaded   bool
	cron     node.Cron
	hist     map[string][]jobRun // job → newest last
	triggers []node.Trigger
	records  []shoal.Record        // run records to publish
	outcomes map[[2]string]float64 // (job, outcome) → runs since the agent started
}

func newJobState(self, addr, dataDir string, log *slog.Logger, since time.Time) jobState {
	return jobState{
		self: self, addr: addr, dir: filepath.Join(dataDir, "jobs"), logDir: filepath.Join(dataDir, "runtime", "logs"),
		log: log, since: since, hist: map[string][]jobRun{}, outcomes: map[[2]string]float64{},
	}
}

// load reads the history and seeds the cron state from it: runs that were
// going when the agent stopped are its runs again (their containers are
// adopted), and the latest tick run is known to the fleet again.
func (j *jobState) load() error {
	j.loaded = true
	j.cron = node.Cron{Last: map[string]time.Time{}, Runs: map[shoal.Slot]node.Run{}, Ended: map[shoal.Slot]bool{}}
	ents, err := os.ReadDir(j.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read job history: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(j.dir, e.Name()))
		if err != nil {
			return fmt.Errorf("read job history %s: %w", name, err)
		}
		var runs []jobRun
		if err := json.Unmarshal(b, &runs); err != nil {
			j.log.Warn("job history unreadable; starting it afresh", "job", name, "err", err)
			continue
		}
		j.hist[name] = runs
		for _, r := range runs {
			run := node.Run{Job: r.Job, Tick: r.Tick, Manual: r.Manual, Start: r.Start}
			switch r.State {
			case "running":
				j.cron.Runs[run.Slot()] = run
			case "ended":
				j.cron.Ended[run.Slot()] = true
				if !r.Manual && r.Tick.After(j.cron.Last[r.Job]) {
					j.cron.Last[r.Job] = r.Tick
				}
			}
		}
	}
	return nil
}

// due runs one cron step and returns the job runs this node should run.
func (j *jobState) due(spec *shoal.Spec, members []mesh.Member, plan *placement.Placement, records []shoal.Record, instances []shoal.Instance, now time.Time) []runtime.Desired {
	if !j.loaded {
		if err := j.load(); err != nil {
			j.log.Warn("job history", "err", err)
		}
	}
	in := node.CronInput{Now: now, Since: j.since, Self: j.self, Addr: j.addr, Spec: spec, Records: records, Instances: instances, Triggers: j.triggers, Used: usedBy(spec, plan)}
	for _, m := range members {
		in.Members = append(in.Members, node.Member{Node: m.Node, Status: m.Status})
	}
	j.triggers = nil
	var out node.CronOutput
	j.cron, out = node.StepCron(j.cron, in)
	j.records = out.Records
	changed := map[string]bool{}
	for _, e := range out.Events {
		j.apply(e)
		changed[e.Job] = true
	}
	for name := range changed {
		if err := j.save(name); err != nil {
			j.log.Warn("save job history", "job", name, "err", err)
		}
	}
	var want []runtime.Desired
	for _, r := range out.Runs {
		if job := spec.Job(r.Job); job != nil {
			want = append(want, runtime.Desired{Slot: r.Slot(), Service: jobService(job)})
		}
	}
	return want
}

// apply writes one event into the history, and logs it.
func (j *jobState) apply(e node.RunEvent) {
	tick := e.Tick.UTC()
	runs := j.hist[e.Job]
	idx := -1
	for i := len(runs) - 1; i >= 0; i-- {
		if runs[i].Tick.Equal(tick) && runs[i].Manual == e.Manual && runs[i].State != "skipped" {
			idx = i
			break
		}
	}
	switch e.Kind {
	case node.EventStarted:
		j.log.Info("job run started", "job", e.Job, "tick", tick, "manual", e.Manual)
		runs = append(runs, jobRun{Job: e.Job, Tick: tick, Run: tick.Unix(), Node: j.self, Manual: e.Manual, State: "running", Start: e.Start})
	case node.EventEnded:
		j.log.Info("job run ended", "job", e.Job, "tick", tick, "reason", e.Reason, "exit_code", e.ExitCode, "detail", e.Detail)
		if idx < 0 { // adopted without history: written now
			runs = append(runs, jobRun{Job: e.Job, Tick: tick, Run: tick.Unix(), Node: j.self, Manual: e.Manual, Start: e.Start})
			idx = len(runs) - 1
		}
		r := &runs[idx]
		r.State, r.End, r.ExitCode, r.Reason, r.Detail = "ended", e.End, e.ExitCode, string(e.Reason), e.Detail
		j.outcomes[[2]string{e.Job, r.outcome()}]++
	case node.EventSkipped:
		j.log.Info("job tick skipped", "job", e.Job, "tick", tick, "reason", e.Reason, "detail", e.Detail)
		r := jobRun{Job: e.Job, Tick: tick, Run: tick.Unix(), Node: j.self, Manual: e.Manual, State: "skipped", Reason: string(e.Reason), Detail: e.Detail}
		runs = append(runs, r)
		j.outcomes[[2]string{e.Job, r.outcome()}]++
	}
	// Bound the history; the runs that fall out take their logs along.
	for len(runs) > historyLen {
		if old := runs[0]; old.State != "running" {
			j.removeLog(old)
			runs = runs[1:]
			continue
		}
		// A run still going stays: drop the oldest finished entry instead.
		k := 1
		for k < len(runs) && runs[k].State == "running" {
			k++
		}
		if k == len(runs) {
			break
		}
		j.removeLog(runs[k])
		runs = append(runs[:k], runs[k+1:]...)
	}
	j.hist[e.Job] = runs
}

func (j *jobState) removeLog(r jobRun) {
	if r.State == "skipped" {
		return
	}
	base := filepath.Join(j.logDir, fmt.Sprintf("%s-%d.log", r.Job, r.Run))
	for _, p := range []string{base, base + ".1"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			j.log.Warn("remove old job log", "path", p, "err", err)
		}
	}
}

// save writes one job's history atomically: a crash leaves the old file
// or the new one, never half of one.
func (j *jobState) save(name string) error {
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Errorf("job history dir: %w", err)
	}
	runs := j.hist[name]
	if runs == nil {
		runs = []jobRun{}
	}
	b, err := json.MarshalIndent(runs, "", "  ")
	if err != nil {
		return fmt.Errorf("encode job history: %w", err)
	}
	path := filepath.Join(j.dir, name+".json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write job history: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write job history: %w", err)
	}
	return nil
}

// history returns this node's entries, newest first; all jobs when name
// is "".
func (j *jobState) history(name string) []jobRun {
	out := []jobRun{}
	for job, runs := range j.hist {
		if name == "" || job == name {
			out = append(out, runs...)
		}
	}
	sortRuns(out)
	return out
}

// sortRuns orders entries newest tick first, then by job and node.
func sortRuns(rs []jobRun) {
	sort.Slice(rs, func(a, b int) bool {
		x, y := rs[a], rs[b]
		if !x.Tick.Equal(y.Tick) {
			return x.Tick.After(y.Tick)
		}
		if x.Job != y.Job {
			return x.Job < y.Job
		}
		return x.Node < y.Node
	})
}

// metrics is what /metrics reports of the jobs run here.
func (j *jobState) metrics() (success, failure map[string]float64, runs map[[2]string]float64) {
	success, failure, runs = map[string]float64{}, map[string]float64{}, map[[2]string]float64{}
	for job, rs := range j.hist {
		for _, r := range rs {
			if r.State != "ended" {
				continue
			}
			at := float64(r.End.UnixNano()) / float64(time.Second)
			m := failure
			if r.Succeeded() {
				m = success
			}
			if at > m[job] {
				m[job] = at
			}
		}
	}
	for k, v := range j.outcomes {
		runs[k] = v
	}
	return success, failure, runs
}

// usedBy is what the placed services reserve on each node.
func usedBy(spec *shoal.Spec, plan *placement.Placement) map[string]shoal.Resources {
	used := map[string]shoal.Resources{}
	if plan == nil {
		return used
	}
	for _, a := range plan.Assignments {
		if svc := spec.Service(a.Service); svc != nil {
			u := used[a.Node]
			u.CPU += svc.Resources.CPU
			u.Memory += svc.Resources.Memory
			used[a.Node] = u
		}
	}
	return used
}

// jobService is the one-shot service a job run executes as.
func jobService(j *shoal.Job) shoal.Service {
	return shoal.Service{
		Name: j.Name, Image: j.Image, Command: j.Command, Args: j.Args, Env: j.Env,
		Replicas: 1, Resources: j.Resources, Constraints: j.Constraints, Spread: "node",
		Restart: shoal.RestartPolicy{Policy: shoal.RestartNever},
		Update:  shoal.UpdateStrategy{MaxUnavailable: 1},
	}
}
