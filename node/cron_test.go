package node_test

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
	"github.com/shoal-run/shoal/placement"
)

// fleet steps the cron rule of several nodes with instant gossip and a
// modelled runtime: a run's container exits after runFor.
type fleet struct {
	t       *testing.T
	spec    *shoal.Spec
	names   []string
	status  map[string]string
	states  map[string]node.Cron
	since   map[string]time.Time
	records map[string][]shoal.Record
	// containers by node and slot: when it started, and whether it exited.
	ctrs    map[string]map[shoal.Slot]*ctr
	runFor  time.Duration
	events  []ev
	started map[shoal.Slot][]string // slot → nodes that started it
}

type ctr struct {
	start  time.Time
	exited bool
}

type ev struct {
	node string
	node.RunEvent
}

func newFleet(t *testing.T, now time.Time, runFor time.Duration, jobs ...shoal.Job) *fleet {
	f := &fleet{t: t, spec: &shoal.Spec{Jobs: jobs}, status: map[string]string{}, states: map[string]node.Cron{},
		since: map[string]time.Time{}, records: map[string][]shoal.Record{}, ctrs: map[string]map[shoal.Slot]*ctr{},
		runFor: runFor, started: map[shoal.Slot][]string{}}
	for _, n := range []string{"n1", "n2", "n3"} {
		f.names = append(f.names, n)
		f.status[n] = "alive"
		f.since[n] = now.Add(-time.Minute)
		f.ctrs[n] = map[shoal.Slot]*ctr{}
	}
	return f
}

func (f *fleet) members() []node.Member {
	var ms []node.Member
	for _, n := range f.names {
		ms = append(ms, node.Member{Node: shoal.Node{Name: n, CPU: 4, Memory: 8 << 30}, Status: f.status[n]})
	}
	return ms
}

// step steps every alive node at now.
func (f *fleet) step(now time.Time) {
	for _, n := range f.names {
		if f.status[n] == "alive" {
			f.stepNode(n, now, nil)
		}
	}
}

func (f *fleet) stepNode(n string, now time.Time, triggers []node.Trigger) {
	var recs []shoal.Record
	for _, m := range f.names {
		if f.status[m] == "alive" || f.status[m] == "restarting" {
			recs = append(recs, f.records[m]...)
		}
	}
	var insts []shoal.Instance
	for s, c := range f.ctrs[n] {
		in := shoal.Instance{Slot: s, Node: n, ContainerID: s.String(), StartedAt: c.start, State: shoal.StateHealthy}
		if c.exited || (f.runFor > 0 && !now.Before(c.start.Add(f.runFor))) {
			c.exited = true
			in.State, in.ExitCode = shoal.StateExited, 0
		}
		insts = append(insts, in)
	}
	st, out := node.StepCron(f.states[n], node.CronInput{
		Now: now, Since: f.since[n], Self: n, Spec: f.spec, Members: f.members(),
		Records: recs, Instances: insts, Triggers: triggers,
	})
	f.states[n] = st
	f.records[n] = out.Records
	want := map[shoal.Slot]bool{}
	for _, r := range out.Runs {
		want[r.Slot()] = true
		if f.ctrs[n][r.Slot()] == nil {
			f.ctrs[n][r.Slot()] = &ctr{start: now}
		}
	}
	for s := range f.ctrs[n] {
		if !want[s] {
			delete(f.ctrs[n], s) // the runtime stops what is not desired
		}
	}
	for _, e := range out.Events {
		f.events = append(f.events, ev{n, e})
		if e.Kind == node.EventStarted {
			s := shoal.Slot{Service: e.Job, Index: int(e.Tick.Unix())}
			f.started[s] = append(f.started[s], n)
		}
	}
}

// restart models an agent restart: state and records lost, containers kept.
func (f *fleet) restart(n string, now time.Time) {
	f.states[n] = node.Cron{}
	f.records[n] = nil
	f.since[n] = now
	f.status[n] = "alive"
}

func (f *fleet) eventsOf(kind node.EventKind) []ev {
	var out []ev
	for _, e := range f.events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func every(d string) shoal.Job {
	return shoal.Job{Name: "tick", Schedule: "@every " + d, Concurrency: shoal.ConcurrencyForbid, Resources: shoal.Resources{CPU: 0.1, Memory: 32 << 20}}
}

var t0 = utc("2026-03-01 10:00:00")

func TestCronOncePerTickFleetWide(t *testing.T) {
	f := newFleet(t, t0, 1500*time.Millisecond, every("5s"))
	// Nodes step about once a second, each at its own phase.
	for ms := 0; ms < 60_000; ms += 100 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		for i, n := range f.names {
			if (ms/100)%10 == i*3 {
				f.stepNode(n, now, nil)
			}
		}
	}
	// The job was first seen at t0: its ticks are 10:00:05 to 10:00:55.
	if len(f.started) != 11 {
		t.Fatalf("%d ticks started in 60s of @every 5s, want 11: %v", len(f.started), f.started)
	}
	runners := map[string]int{}
	for s, nodes := range f.started {
		if len(nodes) != 1 {
			t.Fatalf("tick %s started on %v", s, nodes)
		}
		if time.Unix(int64(s.Index), 0).Unix()%5 != 0 {
			t.Fatalf("tick %s off the 5s grid", s)
		}
		runners[nodes[0]]++
	}
	if len(runners) < 2 {
		t.Fatalf("every tick on one node: %v; the rank should spread them", runners)
	}
	if got := len(f.eventsOf(node.EventEnded)); got < 11 {
		t.Fatalf("%d runs ended, want at least 11", got)
	}
	for _, e := range f.eventsOf(node.EventEnded) {
		if e.Reason != node.ReasonExited {
			t.Fatalf("run ended %s, want exited", e.Reason)
		}
	}
}

// firstTickRankedFirst finds a tick whose runner is want, among the @every
// 5s ticks after from.
func tickRankedFirst(t *testing.T, j shoal.Job, from time.Time, want string) (time.Time, []string) {
	nodes := []shoal.Node{{Name: "n1", CPU: 4, Memory: 8 << 30}, {Name: "n2", CPU: 4, Memory: 8 << 30}, {Name: "n3", CPU: 4, Memory: 8 << 30}}
	for tk := from.Truncate(5 * time.Second).Add(5 * time.Second); ; tk = tk.Add(5 * time.Second) {
		if r := placement.RunnerRank(&j, tk, nodes); r[0] == want {
			return tk, r
		}
	}
}

func TestCronRunnerPausedHandsOverAfterGrace(t *testing.T) {
	j := every("5s")
	f := newFleet(t, t0, time.Second, j)
	tick, rank := tickRankedFirst(t, j, t0.Add(10*time.Second), "n1")
	f.step(t0)
	f.status[rank[0]] = "restarting"
	f.step(tick)
	f.step(tick.Add(HandoverGraceMinus()))
	if len(f.started) != 0 {
		t.Fatalf("started %v within the grace of a restarting runner", f.started)
	}
	f.step(tick.Add(node.HandoverGrace))
	slot := shoal.Slot{Service: j.Name, Index: int(tick.Unix())}
	if got := f.started[slot]; len(got) != 1 || got[0] != rank[1] {
		t.Fatalf("tick started on %v, want the next in rank %s", got, rank[1])
	}
	// The runner comes back before its run ends: it has lost its state but
	// must not run the tick again, neither during nor after its settle.
	f.restart(rank[0], tick.Add(node.HandoverGrace+500*time.Millisecond))
	for d := node.HandoverGrace + 500*time.Millisecond; d < 5*time.Second; d += 250 * time.Millisecond {
		f.step(tick.Add(d))
	}
	if got := f.started[slot]; len(got) != 1 {
		t.Fatalf("tick started on %v, want once", got)
	}
}

func HandoverGraceMinus() time.Duration { return node.HandoverGrace - time.Millisecond }

func TestCronRunnerFailedNextTakesAtOnce(t *testing.T) {
	j := every("5s")
	f := newFleet(t, t0, time.Second, j)
	tick, rank := tickRankedFirst(t, j, t0.Add(10*time.Second), "n2")
	f.step(t0)
	f.status[rank[0]] = "failed"
	f.step(tick)
	slot := shoal.Slot{Service: j.Name, Index: int(tick.Unix())}
	if got := f.started[slot]; len(got) != 1 || got[0] != rank[1] {
		t.Fatalf("tick started on %v, want %s at once", got, rank[1])
	}
}

// The runner dies after it reported the run started: the next in rank
// sees the tick taken and does not run it again.
func TestCronRunnerDiesAfterStartNoSecondRun(t *testing.T) {
	j := every("5s")
	f := newFleet(t, t0, 10*time.Second, j)
	tick, rank := tickRankedFirst(t, j, t0.Add(10*time.Second), "n3")
	f.step(t0)
	f.step(tick)
	f.step(tick.Add(time.Second)) // peers have seen its record
	f.status[rank[0]] = "failed"
	for d := 2 * time.Second; d < 5*time.Second; d += 500 * time.Millisecond {
		f.step(tick.Add(d))
	}
	slot := shoal.Slot{Service: j.Name, Index: int(tick.Unix())}
	if got := f.started[slot]; len(got) != 1 || got[0] != rank[0] {
		t.Fatalf("tick started on %v, want once on %s", got, rank[0])
	}
}

func TestCronForbidNeverOverlaps(t *testing.T) {
	j := every("5s")
	f := newFleet(t, t0, 12*time.Second, j) // each run outlasts two ticks
	for d := time.Duration(0); d < 60*time.Second; d += 500 * time.Millisecond {
		f.step(t0.Add(d))
		running := 0
		for _, n := range f.names {
			for _, c := range f.ctrs[n] {
				if !c.exited {
					running++
				}
			}
		}
		if running > 1 {
			t.Fatalf("at +%v: %d runs at once under forbid", d, running)
		}
	}
	if len(f.eventsOf(node.EventSkipped)) == 0 || len(f.started) < 3 {
		t.Fatalf("started %d, skipped %d: want both", len(f.started), len(f.eventsOf(node.EventSkipped)))
	}
	for _, e := range f.eventsOf(node.EventSkipped) {
		if e.Reason != node.ReasonForbid {
			t.Fatalf("skipped for %s", e.Reason)
		}
	}
}

func TestCronReplaceStopsTheOldRunWherever(t *testing.T) {
	j := every("5s")
	j.Concurrency = shoal.ConcurrencyReplace
	f := newFleet(t, t0, time.Hour, j) // runs never end on their own
	for d := time.Duration(0); d < 30*time.Second; d += 500 * time.Millisecond {
		f.step(t0.Add(d))
	}
	replaced := f.eventsOf(node.EventEnded)
	if len(replaced) < 4 {
		t.Fatalf("%d runs ended, want one per new tick", len(replaced))
	}
	crossNode := false
	for _, e := range replaced {
		if e.Reason != node.ReasonReplaced {
			t.Fatalf("ended %s, want replaced", e.Reason)
		}
		next := shoal.Slot{Service: j.Name, Index: int(e.Tick.Unix()) + 5}
		if nodes := f.started[next]; len(nodes) == 1 && nodes[0] != e.node {
			crossNode = true
		}
	}
	if !crossNode {
		t.Fatal("no run was replaced from another node")
	}
}

func TestCronDeadlineEndsTheRun(t *testing.T) {
	j := every("1m")
	j.Deadline = shoal.Duration(20 * time.Second)
	f := newFleet(t, t0, time.Hour, j)
	for d := time.Duration(0); d < 90*time.Second; d += time.Second {
		f.step(t0.Add(d))
	}
	ended := f.eventsOf(node.EventEnded)
	if len(ended) != 1 || ended[0].Reason != node.ReasonDeadline || ended[0].End.Sub(ended[0].Start) != 20*time.Second {
		t.Fatalf("ended %+v, want one deadline kill 20s after its start", ended)
	}
	for _, n := range f.names {
		if len(f.ctrs[n]) != 0 {
			t.Fatalf("%s still runs %v after the deadline", n, f.ctrs[n])
		}
	}
}

// The whole fleet is down over several ticks: when it comes back, only the
// latest missed tick runs, and only within starting_deadline.
func TestCronCatchUpAfterFleetOutage(t *testing.T) {
	for _, tc := range []struct {
		name     string
		deadline time.Duration
		wantRun  bool
	}{
		{"no starting_deadline: latest tick runs late", 0, true},
		{"within starting_deadline", 10 * time.Minute, true},
		{"past starting_deadline", 2 * time.Minute, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := shoal.Job{Name: "report", Schedule: "*/15 * * * *", Concurrency: shoal.ConcurrencyForbid, StartingDeadline: shoal.Duration(tc.deadline)}
			f := newFleet(t, t0, time.Second, j)
			for d := -time.Second; d < 2*time.Second; d += time.Second {
				f.step(t0.Add(d)) // the 10:00 tick
			}
			f.step(t0.Add(5 * time.Second))
			if len(f.started) != 1 {
				t.Fatalf("started %v, want the 10:00 tick", f.started)
			}
			// Down 10:01 to 10:50, keeping what each node had on disk
			// (Last comes from its history).
			back := utc("2026-03-01 10:50:00")
			for _, n := range f.names {
				last := f.states[n].Last
				f.restart(n, back)
				f.states[n] = node.Cron{Last: last}
			}
			for d := time.Duration(0); d <= node.Settle+2*time.Second; d += time.Second {
				f.step(back.Add(d))
			}
			var ticks []string
			for s := range f.started {
				ticks = append(ticks, time.Unix(int64(s.Index), 0).UTC().Format("15:04"))
			}
			sort.Strings(ticks)
			want := []string{"10:00"}
			if tc.wantRun {
				want = append(want, "10:45")
			}
			if fmt.Sprint(ticks) != fmt.Sprint(want) {
				t.Fatalf("ticks run %v, want %v", ticks, want)
			}
			if !tc.wantRun {
				sk := f.eventsOf(node.EventSkipped)
				if len(sk) != 1 || sk[0].Reason != node.ReasonStartingDeadline {
					t.Fatalf("skips %+v, want one starting_deadline", sk)
				}
			}
		})
	}
}

// A new job does not replay ticks from before the fleet saw it.
func TestCronNewJobStartsFromNow(t *testing.T) {
	j := shoal.Job{Name: "daily", Schedule: "@daily", Concurrency: shoal.ConcurrencyForbid}
	f := newFleet(t, t0, time.Second, j)
	for d := time.Duration(0); d < 10*time.Second; d += time.Second {
		f.step(t0.Add(d))
	}
	if len(f.started) != 0 {
		t.Fatalf("started %v: ticks before the job was seen", f.started)
	}
}

// An agent restarted mid-run adopts its run from the container's labels
// and records its exit; an ended run whose container lingers is not
// adopted again; a run whose container is gone is recorded lost.
func TestCronAdoptAfterRestart(t *testing.T) {
	j := every("1m")
	spec := &shoal.Spec{Jobs: []shoal.Job{j}}
	tick := utc("2026-03-01 10:01:00")
	slot := shoal.Slot{Service: "tick", Index: int(tick.Unix())}
	members := []node.Member{{Node: shoal.Node{Name: "n1", CPU: 1, Memory: 1 << 30}, Status: "alive"}}
	since := tick.Add(10 * time.Second)
	running := shoal.Instance{Slot: slot, ContainerID: "c1", StartedAt: tick, State: shoal.StateHealthy}
	in := node.CronInput{Now: since, Since: since, Self: "n1", Spec: spec, Members: members, Instances: []shoal.Instance{running}}
	st, out := node.StepCron(node.Cron{}, in)
	if len(out.Runs) != 1 || out.Runs[0].Slot() != slot || !out.Runs[0].Start.Equal(tick) {
		t.Fatalf("runs %+v, want the adopted run of %s", out.Runs, slot)
	}
	exited := running
	exited.State, exited.ExitCode, exited.ExitedAt = shoal.StateExited, 3, since.Add(time.Second)
	in.Now, in.Instances = since.Add(2*time.Second), []shoal.Instance{exited}
	st, out = node.StepCron(st, in)
	if len(out.Events) != 1 || out.Events[0].Reason != node.ReasonExited || out.Events[0].ExitCode != 3 || !out.Events[0].End.Equal(exited.ExitedAt) {
		t.Fatalf("events %+v, want its exit with code 3", out.Events)
	}
	if len(out.Runs) != 0 {
		t.Fatalf("runs %+v after the exit", out.Runs)
	}
	// The container lingers until the runtime removes it.
	in.Now = since.Add(3 * time.Second)
	_, out = node.StepCron(st, in)
	if len(out.Events) != 0 || len(out.Runs) != 0 {
		t.Fatalf("the ended run came back: %+v %+v", out.Events, out.Runs)
	}
	if len(out.Records) != 1 || out.Records[0].PortName != node.KindDone || out.Records[0].Slot != slot.Index {
		t.Fatalf("records %+v, want the done record of %s", out.Records, slot)
	}

	// Lost: the history says running, the container is gone.
	hist := node.Cron{Runs: map[shoal.Slot]node.Run{slot: {Job: "tick", Tick: tick, Start: tick}}}
	_, out = node.StepCron(hist, node.CronInput{Now: since, Since: since, Self: "n1", Spec: spec, Members: members})
	if len(out.Events) == 0 || out.Events[0].Reason != node.ReasonLost {
		t.Fatalf("events %+v, want the run lost", out.Events)
	}
}

func TestCronManualTrigger(t *testing.T) {
	j := shoal.Job{Name: "report", Schedule: "@daily", Concurrency: shoal.ConcurrencyForbid}
	f := newFleet(t, t0, 3*time.Second, j)
	f.step(t0)
	f.stepNode("n2", t0.Add(time.Second), []node.Trigger{{Job: "report", Tick: t0.Add(time.Second)}})
	f.step(t0.Add(1500 * time.Millisecond))
	// A second trigger while the first runs is refused under forbid.
	f.stepNode("n1", t0.Add(2*time.Second), []node.Trigger{{Job: "report", Tick: t0.Add(2 * time.Second)}})
	started, skipped := f.eventsOf(node.EventStarted), f.eventsOf(node.EventSkipped)
	if len(started) != 1 || started[0].node != "n2" || !started[0].Manual {
		t.Fatalf("started %+v, want one manual run on n2", started)
	}
	if len(skipped) != 1 || skipped[0].Reason != node.ReasonForbid {
		t.Fatalf("skipped %+v, want the second trigger refused", skipped)
	}
	for d := 2 * time.Second; d < 10*time.Second; d += time.Second {
		f.step(t0.Add(d))
	}
	// A manual run does not count as a scheduled tick done.
	for _, n := range f.names {
		if !f.states[n].Last["report"].IsZero() {
			t.Fatalf("%s counts the manual run as the job's last tick", n)
		}
	}
}

// No node has room beside the placed services: the tick is skipped, said
// once in the fleet.
func TestCronNoNodeWithRoom(t *testing.T) {
	j := every("5s")
	j.Resources.CPU = 2
	f := newFleet(t, t0, time.Second, j)
	used := map[string]shoal.Resources{"n1": {CPU: 3}, "n2": {CPU: 3}, "n3": {CPU: 3}}
	var skips int
	for _, n := range f.names {
		_, out := node.StepCron(node.Cron{Seen: map[string]time.Time{"tick": t0}}, node.CronInput{
			Now: t0.Add(5 * time.Second), Since: t0.Add(-time.Minute), Self: n, Spec: f.spec, Members: f.members(), Used: used})
		if len(out.Runs) != 0 {
			t.Fatalf("%s runs %+v without room", n, out.Runs)
		}
		for _, e := range out.Events {
			if e.Kind == node.EventSkipped && e.Reason == node.ReasonNoNode {
				skips++
			}
		}
	}
	if skips != 1 {
		t.Fatalf("%d nodes recorded the skip, want 1", skips)
	}
}

func TestRunRecordsRoundTrip(t *testing.T) {
	tick := utc("2026-03-01 10:01:00")
	_, out := node.StepCron(node.Cron{Last: map[string]time.Time{"tick": tick}}, node.CronInput{
		Now: tick, Since: tick, Self: "n1", Addr: "10.0.0.1", Spec: &shoal.Spec{Jobs: []shoal.Job{every("1m")}}})
	if len(out.Records) != 1 {
		t.Fatalf("records %+v", out.Records)
	}
	if a := out.Records[0].Addr; a != "10.0.0.1" {
		t.Fatalf("run record at %q, want the node's address (the mesh drops it otherwise)", a)
	}
	r, ok := node.ParseRunRecord(out.Records[0])
	if !ok || r.Job != "tick" || !r.Tick.Equal(tick) || r.Kind != node.KindDone || r.Node != "n1" {
		t.Fatalf("parsed %+v %v", r, ok)
	}
	if node.IsRunRecord(shoal.Record{Service: "web", PortName: "http", Port: 80}) {
		t.Fatal("a service record taken for a run record")
	}
}
