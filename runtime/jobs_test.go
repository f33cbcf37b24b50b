package runtime_test

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
	"github.com/shoal-run/shoal/runtime"
)

// jobRun drives node.StepCron over a real runtime for one node, as the
// agent does: the cron step's runs become the runtime's desired slots.
type jobRun struct {
	t     *testing.T
	rt    *runtime.Runtime
	spec  *shoal.Spec
	st    node.Cron
	since time.Time
	ended []node.RunEvent
}

func (j *jobRun) step(now time.Time) []node.Run {
	j.t.Helper()
	st, out := node.StepCron(j.st, node.CronInput{
		Now: now, Since: j.since, Self: "n1", Spec: j.spec, Instances: j.rt.Instances(),
		Members: []node.Member{{Node: shoal.Node{Name: "n1", CPU: 4, Memory: 8 << 30}, Status: "alive"}},
	})
	j.st = st
	var want []runtime.Desired
	for _, r := range out.Runs {
		job := j.spec.Job(r.Job)
		want = append(want, runtime.Desired{Slot: r.Slot(), Service: shoal.Service{
			Name: job.Name, Image: job.Image, Env: job.Env, Replicas: 1, Resources: job.Resources,
			Restart: shoal.RestartPolicy{Policy: shoal.RestartNever}, Update: shoal.UpdateStrategy{MaxUnavailable: 1},
		}})
	}
	j.rt.SetDesired("rev1", want)
	for _, e := range out.Events {
		if e.Kind == node.EventEnded {
			j.ended = append(j.ended, e)
		}
	}
	return out.Runs
}

func sleeper(sleep string, deadline time.Duration) *shoal.Spec {
	return &shoal.Spec{Jobs: []shoal.Job{{
		Name: "batch", Image: appRef, Schedule: "@every 1h", Concurrency: shoal.ConcurrencyForbid,
		Env: map[string]string{"SLEEP": sleep, "EXIT_CODE": "7"}, Resources: shoal.Resources{CPU: 0.1, Memory: 32 << 20},
		Deadline: shoal.Duration(deadline),
	}}}
}

func runningJob(rt *runtime.Runtime) bool {
	for _, in := range rt.Instances() {
		if in.Service == "batch" && in.ContainerID != "" && in.State != shoal.StateExited {
			return true
		}
	}
	return false
}

// A run past its deadline is killed, and recorded so.
func TestJobDeadlineKills(t *testing.T) {
	rt, _ := newRuntime(t, "shtest-jobdeadline")
	j := &jobRun{t: t, rt: rt, spec: sleeper("1h", 3*time.Second), since: time.Now().Add(-time.Minute)}
	// The job was first seen before its latest tick: that tick is due.
	tick := time.Now().Truncate(time.Hour)
	j.st = node.Cron{Seen: map[string]time.Time{"batch": tick.Add(-time.Second)}}
	if runs := j.step(time.Now()); len(runs) != 1 {
		t.Fatalf("runs %+v, want the due tick", runs)
	}
	waitFor(t, 30*time.Second, "the run to start", func() bool { j.step(time.Now()); return runningJob(rt) })
	waitFor(t, 30*time.Second, "the deadline to end the run", func() bool {
		j.step(time.Now())
		return len(j.ended) > 0 && len(rt.Instances()) == 0
	})
	if e := j.ended[0]; e.Reason != node.ReasonDeadline || e.End.Sub(e.Start) < 3*time.Second {
		t.Fatalf("ended %+v, want killed at its 3s deadline", e)
	}
}

// A run started by one runtime keeps running when the runtime (the agent)
// restarts; the new one adopts it by its labels, and its exit code is
// recorded when it ends.
func TestJobRunSurvivesRuntimeRestart(t *testing.T) {
	const ns = "shtest-jobadopt"
	dir := t.TempDir() // the agent's data dir, kept across its restart
	sameDir := func(c *runtime.Config) { c.DataDir = dir }
	rt, stop := newRuntime(t, ns, sameDir)
	spec := sleeper("4s", 0)
	j := &jobRun{t: t, rt: rt, spec: spec, since: time.Now().Add(-time.Minute)}
	tick := time.Now().Truncate(time.Hour)
	j.st = node.Cron{Seen: map[string]time.Time{"batch": tick.Add(-time.Second)}}
	j.step(time.Now())
	waitFor(t, 30*time.Second, "the run to start", func() bool { j.step(time.Now()); return runningJob(rt) })
	var id string
	for _, in := range rt.Instances() {
		id = in.ContainerID
	}
	stop()

	// The agent comes back with no memory of the run.
	rt2, _ := newRuntime(t, ns, sameDir)
	waitFor(t, 10*time.Second, "the runtime's first look", rt2.Observed)
	if !runningJob(rt2) || rt2.Instances()[0].ContainerID != id {
		t.Fatalf("instances %+v, want the run %s still running", rt2.Instances(), id)
	}
	j2 := &jobRun{t: t, rt: rt2, spec: spec, since: time.Now()}
	if runs := j2.step(time.Now()); len(runs) != 1 || runs[0].Tick.Unix() != tick.Unix() {
		t.Fatalf("runs %+v, want the adopted run of tick %d", runs, tick.Unix())
	}
	waitFor(t, 30*time.Second, "the adopted run's exit to be recorded", func() bool {
		j2.step(time.Now())
		return len(j2.ended) > 0
	})
	if e := j2.ended[0]; e.Reason != node.ReasonExited || e.ExitCode != 7 {
		t.Fatalf("ended %+v, want exited with code 7", e)
	}
	waitFor(t, 30*time.Second, "the ended run's container to go", func() bool { j2.step(time.Now()); return len(rt2.Instances()) == 0 })
	rc, err := rt2.Logs(shoal.Slot{Service: "batch", Index: int(tick.Unix())}, false)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if !strings.Contains(string(b), "hello from batch/") {
		t.Fatalf("run output %q", b)
	}
}
