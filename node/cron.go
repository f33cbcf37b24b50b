package node

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/placement"
)

// Timing of cron decisions. They are part of the contract the README
// states, so they are constants rather than knobs.
const (
	// HandoverGrace is how long past a tick the next node in rank waits
	// for a runner that is restarting (a paused member) before it takes
	// the tick itself. A runner that fails outright leaves the rank at
	// once, when the fleet marks it failed.
	HandoverGrace = 3 * time.Second
	// Settle is how long a node that just started waits for its peers'
	// run records before it decides a tick that came before its start:
	// another node may have run it meanwhile.
	Settle = 5 * time.Second
	// StartTimeout ends a run whose container could not be started.
	StartTimeout = 2 * time.Minute
)

// Reason says why a run ended or a tick was skipped.
type Reason string

const (
	ReasonExited   Reason = "exited"   // the process ended; ExitCode says how
	ReasonDeadline Reason = "deadline" // ran past the job's deadline: killed
	ReasonReplaced Reason = "replaced" // a newer run of a replace job started
	ReasonRemoved  Reason = "removed"  // the job left the spec
	ReasonLost     Reason = "lost"     // the container was gone when the agent came back
	ReasonFailed   Reason = "failed"   // the container never started
	// Skips.
	ReasonForbid           Reason = "forbid"            // the previous run still runs
	ReasonStartingDeadline Reason = "starting_deadline" // the tick came too late to start
	ReasonNoNode           Reason = "no_node"           // no live node matches and has room
)

// EventKind is what happened to a run.
type EventKind string

const (
	EventStarted EventKind = "started"
	EventEnded   EventKind = "ended"
	EventSkipped EventKind = "skipped"
)

// RunEvent is one entry for the history: a run started, ended, or a tick
// skipped, on this node.
type RunEvent struct {
	Kind     EventKind
	Job      string
	Tick     time.Time
	Manual   bool
	Start    time.Time // started and ended
	End      time.Time // ended
	ExitCode int       // ended with ReasonExited
	Reason   Reason    // ended and skipped
	Detail   string
}

// Run is a run of a job on this node: a one-shot slot whose index is the
// tick's Unix time.
type Run struct {
	Job    string
	Tick   time.Time
	Manual bool
	Start  time.Time
}

// Slot is the run's slot, which names its container and its log.
func (r Run) Slot() shoal.Slot { return shoal.Slot{Service: r.Job, Index: int(r.Tick.Unix())} }

// Cron is the cron part of a node's state, carried from step to step.
type Cron struct {
	// Seen is when this node first saw each job: no earlier tick runs.
	Seen map[string]time.Time
	// Decided is the latest tick of each job this node knows decided:
	// taken by any node (remembered after that node's records are gone
	// with it), or skipped here.
	Decided map[string]time.Time
	// Last is the latest scheduled tick this node ran to its end: it
	// is published (KindDone) and kept in the node's history on disk,
	// so it survives a restart.
	Last map[string]time.Time
	// Runs are this node's runs in progress, by slot.
	Runs map[shoal.Slot]Run
	// Ended are runs that ended while their container may still exist:
	// never adopted again. A slot leaves when its container is gone.
	Ended map[shoal.Slot]bool
}

// Member is a fleet member as the cron rule sees it: its Status is the
// mesh's (alive, restarting, failed, left, ...).
type Member struct {
	Node   shoal.Node
	Status string
}

// Trigger asks for a manual run (shoal jobs run) of Job at Tick on this
// node: the node that received the request ranked the runners already.
type Trigger struct {
	Job  string
	Tick time.Time
}

// CronInput is what one cron step decides from.
type CronInput struct {
	Now time.Time
	// Since is when this agent started: runs older than it whose
	// container is gone were lost with the node.
	Since time.Time
	Self  string
	// Addr is this node's advertised address. Its run records carry it:
	// the mesh believes a node's records only at the node's own address.
	Addr string
	Spec *shoal.Spec
	// Members is every known member; Used is what the placed services
	// reserve on each node, so a run goes where it fits beside them.
	Members   []Member
	Used      map[string]shoal.Resources
	Records   []shoal.Record
	Instances []shoal.Instance
	Triggers  []Trigger
}

// CronOutput is what one cron step decides.
type CronOutput struct {
	// Runs must be running on this node, sorted by slot.
	Runs []Run
	// Records are this node's run records to publish, sorted.
	Records []shoal.Record
	// Events are for the node's history, in the order they happened.
	Events []RunEvent
}

// StepCron decides this node's cron runs. The rule, the same on every node:
//
//   - A job's tick T is the schedule's latest tick after its origin: the
//     latest tick any node is known to have taken (from run records, this
//     node's history, or its own decisions) or, for a job never run, when
//     this node first saw it (a new job replays no past). A tick older than the latest is never run:
//     catching up after an outage is at most one run.
//   - Its runner is the first of placement.RunnerRank among the live
//     members (alive or restarting) that match and have room beside the
//     placed services. A restarting runner keeps its tick for
//     HandoverGrace, then the next in rank takes it; a failed one has left
//     the rank already.
//   - The runner skips the tick when a run of a forbid job is still in
//     progress anywhere, or when starting_deadline has passed; otherwise
//     it starts the run and publishes its record, which moves every
//     node's origin past T, so no tick runs twice.
//   - A run ends when its process exits, at its deadline (killed), when a
//     newer run of a replace job starts anywhere, when the job leaves the
//     spec, or when its container never starts.
//
// StepCron is pure: the returned state shares nothing with st.
func StepCron(st Cron, in CronInput) (Cron, CronOutput) {
	st = st.clone()
	var out CronOutput
	now := in.Now

	inst := map[shoal.Slot]shoal.Instance{}
	for _, i := range in.Instances {
		if cur, ok := inst[i.Slot]; !ok || cur.ContainerID == "" {
			inst[i.Slot] = i
		}
	}
	status := map[string]string{}
	for _, m := range in.Members {
		status[m.Node.Name] = m.Status
	}
	// What the fleet says: runs in progress elsewhere, and the latest tick
	// taken of each job.
	elsewhere := map[string][]RunRecord{}
	taken := map[string]time.Time{}
	for _, r := range in.Records {
		rr, ok := ParseRunRecord(r)
		if !ok || rr.Node == in.Self {
			continue
		}
		if rr.Kind != KindDone {
			elsewhere[rr.Job] = append(elsewhere[rr.Job], rr)
		}
		if rr.Kind != KindManual && rr.Tick.After(taken[rr.Job]) {
			taken[rr.Job] = rr.Tick
		}
	}

	// Adopt runs found in containerd that the state lacks (an agent that
	// lost its history): the label-derived slot says job and tick.
	for _, i := range in.Instances {
		j := in.Spec.Job(i.Service)
		if j == nil || i.ContainerID == "" {
			continue
		}
		if _, ok := st.Runs[i.Slot]; !ok && !st.Ended[i.Slot] {
			start := i.StartedAt
			if start.IsZero() {
				start = now
			}
			st.Runs[i.Slot] = Run{Job: j.Name, Tick: time.Unix(int64(i.Index), 0).UTC(), Start: start}
		}
	}

	for s := range st.Ended {
		if _, ok := inst[s]; !ok {
			delete(st.Ended, s)
		}
	}
	end := func(r Run, why Reason, code int, detail string) {
		delete(st.Runs, r.Slot())
		st.Ended[r.Slot()] = true
		if !r.Manual && r.Tick.After(st.Last[r.Job]) {
			st.Last[r.Job] = r.Tick
		}
		out.Events = append(out.Events, RunEvent{Kind: EventEnded, Job: r.Job, Tick: r.Tick, Manual: r.Manual, Start: r.Start, End: now, ExitCode: code, Reason: why, Detail: detail})
	}
	for _, r := range st.sortedRuns() {
		j := in.Spec.Job(r.Job)
		i, seen := inst[r.Slot()]
		switch {
		case j == nil:
			end(r, ReasonRemoved, 0, "")
		case seen && i.ContainerID != "" && i.State == shoal.StateExited:
			at := i.ExitedAt
			if at.IsZero() {
				at = now
			}
			end(r, ReasonExited, i.ExitCode, "")
			out.Events[len(out.Events)-1].End = at
		case j.Deadline > 0 && !now.Before(r.Start.Add(j.Deadline.D())):
			end(r, ReasonDeadline, 0, "ran past its deadline "+j.Deadline.D().String())
		case j.Concurrency == shoal.ConcurrencyReplace && newerElsewhere(elsewhere[r.Job], r.Tick):
			end(r, ReasonReplaced, 0, "")
		case !seen && r.Start.Before(in.Since):
			end(r, ReasonLost, 0, "its container was gone when the agent started")
		case seen && i.ContainerID == "" && now.Sub(r.Start) >= StartTimeout:
			end(r, ReasonFailed, 0, i.LastError)
		}
	}

	// Manual runs: the node that took the request chose this one.
	for _, t := range in.Triggers {
		j := in.Spec.Job(t.Job)
		if j == nil {
			continue
		}
		r := Run{Job: j.Name, Tick: t.Tick.Truncate(time.Second).UTC(), Manual: true, Start: now}
		if _, dup := st.Runs[r.Slot()]; dup || st.Ended[r.Slot()] {
			continue
		}
		if j.Concurrency == shoal.ConcurrencyForbid && (len(elsewhere[j.Name]) > 0 || st.running(j.Name)) {
			out.Events = append(out.Events, RunEvent{Kind: EventSkipped, Job: j.Name, Tick: r.Tick, Manual: true, Reason: ReasonForbid, Detail: "the previous run still runs"})
			continue
		}
		st.replaceOlder(j, r.Tick, end)
		st.Runs[r.Slot()] = r
		out.Events = append(out.Events, RunEvent{Kind: EventStarted, Job: j.Name, Tick: r.Tick, Manual: true, Start: now})
	}

	for i := range in.Spec.Jobs {
		j := &in.Spec.Jobs[i]
		if _, ok := st.Seen[j.Name]; !ok {
			st.Seen[j.Name] = now
		}
		sched, err := shoal.ParseSchedule(j.Schedule)
		if err != nil {
			continue // validation refused such a spec already
		}
		st.Decided[j.Name] = latest(st.Decided[j.Name], taken[j.Name])
		origin := latest(st.Decided[j.Name], st.Last[j.Name])
		for _, r := range st.Runs {
			if r.Job == j.Name && !r.Manual && r.Tick.After(origin) {
				origin = r.Tick
			}
		}
		if origin.IsZero() {
			origin = st.Seen[j.Name] // never run: no tick from before it was seen
		}
		tick, ok := LatestTick(sched, origin, now)
		if !ok {
			continue
		}
		if tick.Before(in.Since) && now.Before(in.Since.Add(Settle)) {
			continue // the fleet may have run it while this node was away
		}
		tick = tick.UTC()
		rank := placement.RunnerRank(j, tick, roomFor(in.Members, in.Used))
		if len(rank) == 0 {
			// Every node sees that no node can run it; the first live
			// one by name says so in its history.
			st.Decided[j.Name] = tick
			if firstLive(in.Members) == in.Self {
				out.Events = append(out.Events, RunEvent{Kind: EventSkipped, Job: j.Name, Tick: tick, Reason: ReasonNoNode, Detail: "no live node matches its constraints and has room"})
			}
			continue
		}
		if taker(rank, status, tick, now) != in.Self {
			continue
		}
		st.Decided[j.Name] = tick
		switch {
		case j.StartingDeadline > 0 && now.Sub(tick) > j.StartingDeadline.D():
			out.Events = append(out.Events, RunEvent{Kind: EventSkipped, Job: j.Name, Tick: tick, Reason: ReasonStartingDeadline, Detail: "late by " + now.Sub(tick).Round(time.Millisecond).String()})
		case j.Concurrency == shoal.ConcurrencyForbid && (len(elsewhere[j.Name]) > 0 || st.running(j.Name)):
			out.Events = append(out.Events, RunEvent{Kind: EventSkipped, Job: j.Name, Tick: tick, Reason: ReasonForbid, Detail: "the previous run still runs"})
		default:
			st.replaceOlder(j, tick, end)
			r := Run{Job: j.Name, Tick: tick, Start: now}
			st.Runs[r.Slot()] = r
			out.Events = append(out.Events, RunEvent{Kind: EventStarted, Job: j.Name, Tick: tick, Start: now})
		}
	}
	for name := range st.Seen {
		if in.Spec.Job(name) == nil {
			delete(st.Seen, name)
			delete(st.Decided, name)
		}
	}

	out.Runs = st.sortedRuns()
	for _, r := range out.Runs {
		kind := KindRunning
		if r.Manual {
			kind = KindManual
		}
		out.Records = append(out.Records, runRecord(in.Self, in.Addr, r.Job, r.Tick, kind))
	}
	for name, t := range st.Last {
		if in.Spec.Job(name) != nil && !t.IsZero() {
			out.Records = append(out.Records, runRecord(in.Self, in.Addr, name, t, KindDone))
		}
	}
	shoal.SortRecords(out.Records)
	return st, out
}

// taker is the node that takes tick now: the first in rank that is alive,
// passing over restarting ones once HandoverGrace has passed since the
// tick. "" while a restarting runner still has the tick.
func taker(rank []string, status map[string]string, tick, now time.Time) string {
	for _, name := range rank {
		switch status[name] {
		case "alive":
			return name
		case "restarting":
			if now.Before(tick.Add(HandoverGrace)) {
				return ""
			}
		}
	}
	return ""
}

// roomFor is the live members as runner candidates, with what the placed
// services reserve taken off their capacity.
func roomFor(members []Member, used map[string]shoal.Resources) []shoal.Node {
	var out []shoal.Node
	for _, m := range members {
		if m.Status != "alive" && m.Status != "restarting" {
			continue
		}
		n := m.Node
		u := used[n.Name]
		n.CPU -= u.CPU
		n.Memory -= u.Memory
		out = append(out, n)
	}
	return out
}

func firstLive(members []Member) string {
	best := ""
	for _, m := range members {
		if m.Status == "alive" && (best == "" || m.Node.Name < best) {
			best = m.Node.Name
		}
	}
	return best
}

func newerElsewhere(rs []RunRecord, tick time.Time) bool {
	for _, r := range rs {
		if r.Tick.After(tick) {
			return true
		}
	}
	return false
}

func latest(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// replaceOlder ends this node's older runs of a replace job.
func (c *Cron) replaceOlder(j *shoal.Job, tick time.Time, end func(Run, Reason, int, string)) {
	if j.Concurrency != shoal.ConcurrencyReplace {
		return
	}
	for _, r := range c.sortedRuns() {
		if r.Job == j.Name && r.Tick.Before(tick) {
			end(r, ReasonReplaced, 0, "")
		}
	}
}

func (c *Cron) running(job string) bool {
	for _, r := range c.Runs {
		if r.Job == job {
			return true
		}
	}
	return false
}

func (c *Cron) sortedRuns() []Run {
	out := make([]Run, 0, len(c.Runs))
	for _, r := range c.Runs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Slot(), out[j].Slot()
		return a.Service < b.Service || (a.Service == b.Service && a.Index < b.Index)
	})
	return out
}

func (c Cron) clone() Cron {
	return Cron{Seen: cloneMap(c.Seen), Decided: cloneMap(c.Decided), Last: cloneMap(c.Last), Runs: cloneMap(c.Runs), Ended: cloneMap(c.Ended)}
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
