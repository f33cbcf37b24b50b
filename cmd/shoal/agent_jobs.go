package main

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/placement"
	"github.com/shoal-run/shoal/runtime"
)

// jobState tracks the cron job runs this node owns. A run is a one-shot
// slot: the job's name and the tick's Unix time as the index, with restart
// policy "never", so the runtime runs it once and reports it exited.
type jobState struct {
	evaluated time.Time         // ticks up to here have been decided
	active    map[string]jobRun // job name → its current run on this node
}

type jobRun struct {
	slot     shoal.Slot
	started  time.Time
	deadline time.Time // zero: none
}

// due decides, for the ticks since the last call, which job runs this node
// starts, and returns every run it should still be running. Each tick is
// run by exactly one node: the one placement.Runner ranks first among the
// members this node sees.
func (j *jobState) due(spec *shoal.Spec, nodes []shoal.Node, self string, instances []shoal.Instance, now time.Time) []runtime.Desired {
	if j.active == nil {
		j.active = map[string]jobRun{}
	}
	if j.evaluated.IsZero() {
		// Start from now: an agent that starts does not replay the past.
		j.evaluated = now
	}
	state := map[shoal.Slot]shoal.InstanceState{}
	for _, in := range instances {
		state[in.Slot] = in.State
	}
	// Finish runs that exited or ran out of time; forget jobs that left the spec.
	for name, run := range j.active {
		st, seen := state[run.slot]
		gone := spec.Job(name) == nil
		expired := !run.deadline.IsZero() && now.After(run.deadline)
		if gone || expired || (seen && st == shoal.StateExited) {
			delete(j.active, name)
		}
	}
	for i := range spec.Jobs {
		job := &spec.Jobs[i]
		sched, err := shoal.ParseSchedule(job.Schedule)
		if err != nil {
			continue // validation already refused such a spec
		}
		ticks := shoal.DueTicks(sched, j.evaluated, now, 1)
		if len(ticks) == 0 {
			continue
		}
		tick := ticks[0]
		if runner, ok := placement.Runner(job, tick, nodes); !ok || runner != self {
			continue
		}
		if _, running := j.active[job.Name]; running && job.Concurrency == shoal.ConcurrencyForbid {
			continue // the previous run is still going: skip this tick
		}
		run := jobRun{slot: shoal.Slot{Service: job.Name, Index: int(tick.Unix())}, started: now}
		if job.Deadline > 0 {
			run.deadline = now.Add(job.Deadline.D())
		}
		j.active[job.Name] = run // replaces a run still going, by dropping it
	}
	j.evaluated = now

	var out []runtime.Desired
	for name, run := range j.active {
		job := spec.Job(name)
		out = append(out, runtime.Desired{Slot: run.slot, Service: jobService(job)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Slot.Service < out[b].Slot.Service })
	return out
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
