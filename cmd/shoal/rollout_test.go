package main

import (
	"testing"

	"github.com/shoal-run/shoal"
)

func TestMayReplace(t *testing.T) {
	svc := func(surge, unavailable int) shoal.Service {
		return shoal.Service{Name: "web", Image: "web:2", Replicas: 6,
			Update: shoal.UpdateStrategy{MaxSurge: surge, MaxUnavailable: unavailable}}
	}
	// recs: slots at the new definition (healthy unless listed in sick).
	recs := func(s shoal.Service, newSlots []int, sick ...int) []shoal.Record {
		isSick := map[int]bool{}
		for _, i := range sick {
			isSick[i] = true
		}
		var rs []shoal.Record
		for i := 0; i < s.Replicas; i++ {
			r := shoal.Record{Service: "web", Slot: i, Spec: "oldoldol", Healthy: true}
			for _, n := range newSlots {
				if n == i {
					r.Spec, r.Healthy = shoal.ShortSpec(s.Hash()), !isSick[i]
				}
			}
			rs = append(rs, r)
		}
		return append(rs, shoal.Record{Service: "api", Slot: 0, Spec: shoal.ShortSpec(s.Hash()), Healthy: true})
	}
	for _, tc := range []struct {
		name    string
		svc     shoal.Service
		newOnes []int
		sick    []int
		slot    int
		want    bool
	}{
		{"first batch goes at once", svc(1, 0), nil, nil, 0, true},
		{"second slot waits for the first", svc(1, 0), nil, nil, 1, false},
		{"second slot goes once the first is new and healthy", svc(1, 0), []int{0}, nil, 1, true},
		{"a new but unhealthy slot holds the rollout", svc(1, 0), []int{0}, []int{0}, 1, false},
		{"third waits for both before it", svc(1, 0), []int{1}, nil, 2, false},
		{"surge 2: slots 0 and 1 together", svc(2, 0), nil, nil, 1, true},
		{"surge 2: slot 2 waits for 0 and 1", svc(2, 0), []int{0}, nil, 2, false},
		{"surge 2: slot 3 goes with 2", svc(2, 0), []int{0, 1}, nil, 3, true},
		{"no surge: batches of max_unavailable", svc(0, 3), nil, nil, 2, true},
		{"no surge: next batch waits", svc(0, 3), []int{0, 1}, nil, 3, false},
		{"no surge, no unavailable: one at a time", svc(0, 0), nil, nil, 1, false},
		{"another service's records do not count", svc(1, 0), nil, nil, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mayReplace(tc.svc, tc.slot, recs(tc.svc, tc.newOnes, tc.sick...)); got != tc.want {
				t.Errorf("mayReplace(slot %d) = %v, want %v", tc.slot, got, tc.want)
			}
		})
	}
}

func TestNewFailed(t *testing.T) {
	s := shoal.Slot{Service: "web", Index: 0}
	in := func(spec string, st shoal.InstanceState, restarts int) shoal.Instance {
		return shoal.Instance{Slot: s, SpecHash: spec, State: st, Restarts: restarts}
	}
	for _, tc := range []struct {
		name string
		ins  []shoal.Instance
		want bool
	}{
		{"new copy starting", []shoal.Instance{in("old", shoal.StateHealthy, 0), in("new", shoal.StateStarting, 0)}, false},
		{"new copy healthy", []shoal.Instance{in("new", shoal.StateHealthy, 0)}, false},
		{"new copy unhealthy", []shoal.Instance{in("old", shoal.StateHealthy, 0), in("new", shoal.StateUnhealthy, 0)}, true},
		{"new copy crash-looping", []shoal.Instance{in("new", shoal.StateCrashLoop, 5)}, true},
		{"new copy restarted once, starting again", []shoal.Instance{in("new", shoal.StateStarting, 1)}, true},
		{"only the old copy failing", []shoal.Instance{in("old", shoal.StateUnhealthy, 2)}, false},
		{"another slot's new copy failing", []shoal.Instance{{Slot: shoal.Slot{Service: "web", Index: 1}, SpecHash: "new", State: shoal.StateUnhealthy}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := newFailed(tc.ins, s, "new"); got != tc.want {
				t.Errorf("newFailed = %v, want %v", got, tc.want)
			}
		})
	}
}
