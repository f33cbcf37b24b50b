package runtime

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
)

// Desired is one slot this node should run, with the service definition
// it should run with.
type Desired struct {
	Slot    shoal.Slot
	Service shoal.Service
}

// Observed is what the runtime found of one container with Shoal labels.
type Observed struct {
	ID       string
	Slot     shoal.Slot
	SpecHash string
	Running  bool
	// Exited is set when the container's task ended (or never started);
	// ExitCode and ExitedAt say how and when.
	Exited   bool
	ExitCode int
	ExitedAt time.Time
	// Unhealthy is set when health checks have marked it unhealthy.
	Unhealthy bool
	// Failures counts consecutive failed runs, for the backoff.
	Failures int
	// ReadySince is when it last became ready to serve (passed its health
	// check, or started when it has none); zero while it is not.
	ReadySince time.Time
}

// Actions is what Reconcile decides, in named buckets.
type Actions struct {
	Start   []Desired     // no container for the slot: create and start one
	Replace []Replacement // the container runs another definition: swap it
	Restart []Observed    // exited or unhealthy, policy says restart, backoff passed
	Stop    []Observed    // not desired any more: stop and remove
	Wait    []Observed    // exited or unhealthy, waiting out the backoff
	Keep    []Observed    // running as desired
	Done    []Observed    // exited and the policy says leave it
	// Retire holds containers of an older definition kept serving until
	// their slot's new container has been ready for min_healthy_time.
	Retire []Observed
}

// Replacement pairs the container to replace with the definition to run.
// With Surge the new container starts beside the old one (make before
// break, the service's max_surge > 0); without, the old one goes first.
type Replacement struct {
	Old   Observed
	New   Desired
	Surge bool
}

// Empty reports whether nothing has to be done now.
func (a Actions) Empty() bool {
	return len(a.Start)+len(a.Replace)+len(a.Restart)+len(a.Stop) == 0
}

// Reconcile compares the slots this node should run with the containers it
// has and says what to do. It is pure: the same inputs give the same
// actions, sorted by slot.
func Reconcile(desired []Desired, observed []Observed, now time.Time) Actions {
	var a Actions
	want := make(map[shoal.Slot]Desired, len(desired))
	for _, d := range desired {
		want[d.Slot] = d
	}
	// Per slot: the container of the desired definition (the first one;
	// more are duplicates) and those of older definitions.
	type slotObs struct {
		cur  *Observed
		olds []Observed
	}
	slots := map[shoal.Slot]*slotObs{}
	for _, o := range observed {
		d, ok := want[o.Slot]
		if !ok {
			a.Stop = append(a.Stop, o) // not desired any more
			continue
		}
		so := slots[o.Slot]
		if so == nil {
			so = &slotObs{}
			slots[o.Slot] = so
		}
		switch {
		case o.SpecHash != d.Service.Hash():
			so.olds = append(so.olds, o)
		case so.cur == nil:
			so.cur = &o
		default:
			a.Stop = append(a.Stop, o) // a second container for one slot
		}
	}
	for _, d := range desired {
		so := slots[d.Slot]
		switch {
		case so == nil:
			a.Start = append(a.Start, d)
		case so.cur == nil:
			// Replace the best old copy — serving, and of those the one
			// ready most recently (pushes faster than min_healthy_time
			// leave several generations) — any others go now.
			best := 0
			for i, o := range so.olds {
				b := so.olds[best]
				if serving(o) && (!serving(b) || o.ReadySince.After(b.ReadySince)) {
					best = i
				}
			}
			old := so.olds[best]
			a.Replace = append(a.Replace, Replacement{Old: old, New: d, Surge: d.Service.Update.MaxSurge > 0 && serving(old)})
			for i, o := range so.olds {
				if i != best {
					a.Stop = append(a.Stop, o)
				}
			}
		default:
			o := *so.cur
			switch {
			case o.Running && !o.Unhealthy:
				a.Keep = append(a.Keep, o)
			case !restartWanted(d.Service.Restart.Policy, o):
				a.Done = append(a.Done, o)
			case now.Before(RestartAt(d.Service.Restart, o)):
				a.Wait = append(a.Wait, o)
			default:
				a.Restart = append(a.Restart, o)
			}
			// Old copies serve until the new one has been ready long
			// enough; a new one that never gets there leaves them serving.
			handedOver := !o.ReadySince.IsZero() && !now.Before(o.ReadySince.Add(d.Service.Update.MinHealthyTime.D()))
			for _, old := range so.olds {
				if serving(old) && !handedOver {
					a.Retire = append(a.Retire, old)
				} else {
					a.Stop = append(a.Stop, old)
				}
			}
		}
	}
	bySlot := func(s []Observed) {
		sort.Slice(s, func(i, j int) bool { return slotLess(s[i].Slot, s[j].Slot) })
	}
	sort.Slice(a.Start, func(i, j int) bool { return slotLess(a.Start[i].Slot, a.Start[j].Slot) })
	sort.Slice(a.Replace, func(i, j int) bool { return slotLess(a.Replace[i].New.Slot, a.Replace[j].New.Slot) })
	for _, s := range [][]Observed{a.Restart, a.Stop, a.Wait, a.Keep, a.Done, a.Retire} {
		bySlot(s)
	}
	return a
}

// serving reports whether a container is up and not failing its checks.
func serving(o Observed) bool { return o.Running && !o.Unhealthy }

func slotLess(a, b shoal.Slot) bool {
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	return a.Index < b.Index
}

// restartWanted applies the restart policy to an instance that is not
// running well. An unhealthy instance is restarted unless the policy is
// never; an exited one per the policy and its exit code.
func restartWanted(p shoal.RestartMode, o Observed) bool {
	switch p {
	case shoal.RestartNever:
		return false
	case shoal.RestartOnFailure:
		return o.Unhealthy || o.ExitCode != 0
	default:
		return true
	}
}

// RestartAt is when an instance that stopped at o.ExitedAt after
// o.Failures consecutive failures may start again.
func RestartAt(p shoal.RestartPolicy, o Observed) time.Time {
	return o.ExitedAt.Add(Backoff(p, o.Failures))
}

// Backoff is the delay before restart number failures (1-based): the
// policy's backoff doubled per consecutive failure, capped at max_backoff.
// The first restart is immediate, so one crash costs no delay.
func Backoff(p shoal.RestartPolicy, failures int) time.Duration {
	if failures <= 1 {
		return 0
	}
	d, limit := p.Backoff.D(), p.MaxBackoff.D()
	if d <= 0 {
		d = time.Second
	}
	if limit <= 0 {
		limit = time.Minute
	}
	for i := 2; i < failures; i++ {
		d *= 2
		if d >= limit {
			return limit
		}
	}
	return min(d, limit)
}

// CrashLoopAfter consecutive failures mark an instance as crash-looping.
const CrashLoopAfter = 5

// HealthState is what health checks know of an instance.
type HealthState struct {
	Healthy   bool // passed HealthyThreshold checks in a row since the last failure streak
	Unhealthy bool // failed UnhealthyThreshold checks in a row (outside the grace period)
	Successes int  // consecutive
	Failures  int  // consecutive
	Passed    bool // passed a check at least once: the start grace is over
}

// NextHealth folds one check result into the state. Failures during the
// grace period after start are not counted, so slow starters are not
// killed — until the first pass: from then on an instance that fails is
// taken out of service at once. Successes always count.
func NextHealth(h shoal.Health, st HealthState, ok bool, startedAt, now time.Time) HealthState {
	healthyAt, unhealthyAt := max(h.HealthyThreshold, 1), max(h.UnhealthyThreshold, 1)
	if ok {
		st.Failures = 0
		st.Passed = true
		st.Successes++
		if st.Successes >= healthyAt {
			st.Healthy, st.Unhealthy = true, false
		}
		return st
	}
	if !st.Passed && now.Sub(startedAt) < h.Grace.D() {
		st.Successes = 0
		return st
	}
	st.Successes = 0
	st.Failures++
	if st.Failures >= unhealthyAt {
		st.Healthy, st.Unhealthy = false, true
	}
	return st
}
