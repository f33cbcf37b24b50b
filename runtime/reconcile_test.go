package runtime

import (
	"reflect"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

func TestReconcile(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	web := shoal.Service{Name: "web", Image: "img:1", Restart: shoal.RestartPolicy{Policy: shoal.RestartAlways, Backoff: shoal.Duration(time.Second), MaxBackoff: shoal.Duration(time.Minute)}}
	web2 := web
	web2.Image = "img:2"
	job := web
	job.Name = "job"
	job.Restart.Policy = shoal.RestartNever
	onFail := web
	onFail.Name = "of"
	onFail.Restart.Policy = shoal.RestartOnFailure
	surge := web2
	surge.Update = shoal.UpdateStrategy{MaxSurge: 1, MinHealthyTime: shoal.Duration(5 * time.Second)}
	slot := func(s string, i int) shoal.Slot { return shoal.Slot{Service: s, Index: i} }
	obs := func(s string, i int, svc shoal.Service, mod func(*Observed)) Observed {
		o := Observed{ID: s, Slot: slot(s, i), SpecHash: svc.Hash(), Running: true}
		if mod != nil {
			mod(&o)
		}
		return o
	}
	exited := func(code, failures int, at time.Time) func(*Observed) {
		return func(o *Observed) {
			o.Running, o.Exited, o.ExitCode, o.Failures, o.ExitedAt = false, true, code, failures, at
		}
	}
	ids := func(os []Observed) []string {
		var s []string
		for _, o := range os {
			s = append(s, o.Slot.String())
		}
		return s
	}
	for _, tc := range []struct {
		name     string
		desired  []Desired
		observed []Observed
		now      time.Time
		want     map[string][]string
	}{
		{"nothing running: start all", []Desired{{slot("web", 1), web}, {slot("web", 0), web}}, nil, t0,
			map[string][]string{"start": {"web/0", "web/1"}}},
		{"running as desired: keep", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, nil)}, t0,
			map[string][]string{"keep": {"web/0"}}},
		{"not desired: stop", nil, []Observed{obs("web", 0, web, nil)}, t0,
			map[string][]string{"stop": {"web/0"}}},
		{"duplicate container for a slot: stop the second", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, nil), obs("web", 0, web, nil)}, t0,
			map[string][]string{"keep": {"web/0"}, "stop": {"web/0"}}},
		{"definition changed, no surge: replace, old first", []Desired{{slot("web", 0), web2}}, []Observed{obs("web", 0, web, nil)}, t0,
			map[string][]string{"replace": {"web/0"}}},
		{"definition changed, surge: new beside old", []Desired{{slot("web", 0), surge}}, []Observed{obs("web", 0, web, nil)}, t0,
			map[string][]string{"replace": {"web/0 surge"}}},
		{"surge onto a crashed old copy: old first", []Desired{{slot("web", 0), surge}}, []Observed{obs("web", 0, web, exited(1, 1, t0))}, t0,
			map[string][]string{"replace": {"web/0"}}},
		{"new copy starting: old keeps serving", []Desired{{slot("web", 0), surge}},
			[]Observed{obs("web", 0, web, nil), obs("web", 0, surge, nil)}, t0,
			map[string][]string{"keep": {"web/0"}, "retire": {"web/0"}}},
		{"new copy ready, not for min_healthy_time yet: old keeps serving", []Desired{{slot("web", 0), surge}},
			[]Observed{obs("web", 0, web, nil), obs("web", 0, surge, func(o *Observed) { o.ReadySince = t0 })}, t0.Add(4 * time.Second),
			map[string][]string{"keep": {"web/0"}, "retire": {"web/0"}}},
		{"new copy ready for min_healthy_time: old stops", []Desired{{slot("web", 0), surge}},
			[]Observed{obs("web", 0, web, nil), obs("web", 0, surge, func(o *Observed) { o.ReadySince = t0 })}, t0.Add(5 * time.Second),
			map[string][]string{"keep": {"web/0"}, "stop": {"web/0"}}},
		{"new copy crash-looping: old keeps serving", []Desired{{slot("web", 0), surge}},
			[]Observed{obs("web", 0, web, nil), obs("web", 0, surge, exited(1, 3, t0))}, t0,
			map[string][]string{"wait": {"web/0"}, "retire": {"web/0"}}},
		{"old copy failing during surge: stop it", []Desired{{slot("web", 0), surge}},
			[]Observed{obs("web", 0, web, func(o *Observed) { o.Unhealthy = true }), obs("web", 0, surge, nil)}, t0,
			map[string][]string{"keep": {"web/0"}, "stop": {"web/0"}}},
		{"first crash restarts at once", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, exited(1, 1, t0))}, t0,
			map[string][]string{"restart": {"web/0"}}},
		{"third crash waits out the backoff", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, exited(1, 3, t0))}, t0.Add(time.Second),
			map[string][]string{"wait": {"web/0"}}},
		{"third crash restarts after 2s", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, exited(1, 3, t0))}, t0.Add(2 * time.Second),
			map[string][]string{"restart": {"web/0"}}},
		{"unhealthy restarts", []Desired{{slot("web", 0), web}}, []Observed{obs("web", 0, web, func(o *Observed) { o.Unhealthy = true; o.Failures = 1 })}, t0,
			map[string][]string{"restart": {"web/0"}}},
		{"never: exited job is done", []Desired{{slot("job", 0), job}}, []Observed{obs("job", 0, job, exited(0, 1, t0))}, t0,
			map[string][]string{"done": {"job/0"}}},
		{"on-failure: clean exit is done, failure restarts", []Desired{{slot("of", 0), onFail}, {slot("of", 1), onFail}},
			[]Observed{obs("of", 0, onFail, exited(0, 1, t0)), obs("of", 1, onFail, exited(2, 1, t0))}, t0,
			map[string][]string{"done": {"of/0"}, "restart": {"of/1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Reconcile(tc.desired, tc.observed, tc.now)
			var start, replace []string
			for _, d := range a.Start {
				start = append(start, d.Slot.String())
			}
			for _, r := range a.Replace {
				if r.Surge {
					replace = append(replace, r.New.Slot.String()+" surge")
				} else {
					replace = append(replace, r.New.Slot.String())
				}
			}
			got := map[string][]string{"start": start, "replace": replace, "restart": ids(a.Restart), "stop": ids(a.Stop), "wait": ids(a.Wait), "keep": ids(a.Keep), "done": ids(a.Done), "retire": ids(a.Retire)}
			for k, v := range got {
				if len(v) == 0 {
					delete(got, k)
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	p := shoal.RestartPolicy{Backoff: shoal.Duration(time.Second), MaxBackoff: shoal.Duration(10 * time.Second)}
	for failures, want := range map[int]time.Duration{0: 0, 1: 0, 2: time.Second, 3: 2 * time.Second, 4: 4 * time.Second, 5: 8 * time.Second, 6: 10 * time.Second, 60: 10 * time.Second} {
		if got := Backoff(p, failures); got != want {
			t.Errorf("Backoff(%d) = %v, want %v", failures, got, want)
		}
	}
}

func TestNextHealth(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := shoal.Health{Grace: shoal.Duration(5 * time.Second), HealthyThreshold: 2, UnhealthyThreshold: 3}
	type step struct {
		ok             bool
		at             time.Duration
		healthy, unhlt bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"becomes healthy after 2 passes", []step{{true, 1, false, false}, {true, 2, true, false}}},
		{"failures in grace do not count", []step{{false, 1, false, false}, {false, 2, false, false}, {false, 3, false, false}, {false, 4, false, false}}},
		{"3 failures after grace: unhealthy", []step{{true, 1, false, false}, {true, 2, true, false}, {false, 6, true, false}, {false, 7, true, false}, {false, 8, false, true}}},
		{"after a first pass the grace is over", []step{{true, 1, false, false}, {true, 2, true, false}, {false, 3, true, false}, {false, 4, true, false}, {false, 4, false, true}}},
		{"recovers after 2 passes", []step{{false, 6, false, false}, {false, 7, false, false}, {false, 8, false, true}, {true, 9, false, true}, {true, 10, true, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st HealthState
			for i, s := range tc.steps {
				st = NextHealth(h, st, s.ok, t0, t0.Add(s.at*time.Second))
				if st.Healthy != s.healthy || st.Unhealthy != s.unhlt {
					t.Fatalf("step %d: %+v", i, st)
				}
			}
		})
	}
}

// TestReconcileKeepsNewestOldCopy: pushes faster than min_healthy_time
// leave two older generations of a slot; the next definition surges beside
// the one that became ready last, and the older one goes.
func TestReconcileKeepsNewestOldCopy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	v1 := shoal.Service{Name: "web", Image: "img:1", Update: shoal.UpdateStrategy{MaxSurge: 1, MinHealthyTime: shoal.Duration(5 * time.Second)}}
	v2, v3 := v1, v1
	v2.Image, v3.Image = "img:2", "img:3"
	slot := shoal.Slot{Service: "web", Index: 0}
	for _, order := range [][]int{{0, 1}, {1, 0}} {
		gens := []Observed{
			{ID: "gen1", Slot: slot, SpecHash: v1.Hash(), Running: true, ReadySince: t0},
			{ID: "gen2", Slot: slot, SpecHash: v2.Hash(), Running: true, ReadySince: t0.Add(2 * time.Second)},
		}
		observed := []Observed{gens[order[0]], gens[order[1]]}
		a := Reconcile([]Desired{{slot, v3}}, observed, t0.Add(3*time.Second))
		if len(a.Replace) != 1 || a.Replace[0].Old.ID != "gen2" || !a.Replace[0].Surge {
			t.Errorf("order %v: replace %+v, want a surge beside gen2", order, a.Replace)
		}
		if len(a.Stop) != 1 || a.Stop[0].ID != "gen1" {
			t.Errorf("order %v: stop %+v, want gen1", order, a.Stop)
		}
	}
}
