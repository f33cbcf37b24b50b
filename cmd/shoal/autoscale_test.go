package main

import (
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

func TestWantReplicas(t *testing.T) {
	sc := shoal.Scale{Min: 2, Max: 10, Target: 100}
	for _, tc := range []struct {
		rate float64
		want int
	}{
		{0, 2}, {150, 2}, {200, 2}, {200.5, 3}, {1000, 10}, {5000, 10},
	} {
		if got := wantReplicas(sc, tc.rate); got != tc.want {
			t.Errorf("wantReplicas(%v) = %d, want %d", tc.rate, got, tc.want)
		}
	}
	if got := wantReplicas(shoal.Scale{Min: 0, Max: 3, Target: 10}, 0); got != 1 {
		t.Errorf("min 0 and no traffic: %d replicas, want 1 (a service is never scaled to nothing)", got)
	}
}

// Up at once, down only after the lower count held for the delay; the
// input spec is never modified.
func TestAutoscalerHysteresis(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	spec := &shoal.Spec{Services: []shoal.Service{
		{Name: "db", Replicas: 1}, // sorted by name, as the loader leaves them
		{Name: "web", Replicas: 2, Scale: &shoal.Scale{Min: 1, Max: 5, Target: 10}},
	}}
	a := &autoscaler{downDelay: 30 * time.Second}
	for i, s := range []struct {
		at   time.Duration
		rate float64
		want int
	}{
		{0, 0, 2},     // starts from the spec's count; no traffic asks for fewer
		{10, 0, 2},    // not yet: the lull is 10 s old
		{30, 0, 1},    // 30 s of asking for 1
		{31, 45, 5},   // a burst scales up at once
		{40, 35, 5},   // asks for 4: wait
		{50, 45, 5},   // back at 5: the clock resets
		{75, 35, 5},   // asks for 4 again: a new lull starts at 75
		{105, 35, 4},  // 30 s after 75
		{106, 500, 5}, // capped at max
	} {
		got := a.apply(spec, map[string]float64{"web": s.rate}, t0.Add(s.at*time.Second))
		if n := got.Service("web").Replicas; n != s.want {
			t.Fatalf("step %d (t=%ds rate=%v): %d replicas, want %d", i, s.at, s.rate, n, s.want)
		}
		if got.Service("db").Replicas != 1 || spec.Services[1].Replicas != 2 {
			t.Fatalf("step %d: changed what it must not: %+v / %+v", i, got.Services, spec.Services)
		}
	}
}
