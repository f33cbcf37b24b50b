package main

import (
	"math"
	"time"

	"github.com/shoal-run/shoal"
)

// autoscaler sets the replica count of services with a scale block from
// the fleet's traffic (new connections per second, summed over every
// node's balancer). It scales up at once and down only after the lower
// count has held for downDelay, so a lull does not flap the fleet. Every
// node runs the same rule on the same gossiped sums.
type autoscaler struct {
	downDelay time.Duration
	state     map[string]scaleState
}

type scaleState struct {
	replicas int
	lowSince time.Time // when traffic first asked for fewer; zero if not
}

// wantReplicas is what a rate asks for: enough replicas that each gets at
// most target new connections per second, within [min, max].
func wantReplicas(sc shoal.Scale, rate float64) int {
	n := 0
	if sc.Target > 0 {
		n = int(math.Ceil(rate/sc.Target - 1e-9))
	}
	return min(max(n, sc.Min, 1), sc.Max)
}

// apply returns spec with the replica counts of autoscaled services set,
// a copy when anything changes; spec itself is never modified.
func (s *autoscaler) apply(spec *shoal.Spec, load map[string]float64, now time.Time) *shoal.Spec {
	if s.state == nil {
		s.state = map[string]scaleState{}
	}
	var out *shoal.Spec
	seen := map[string]bool{}
	for i, svc := range spec.Services {
		if svc.Scale == nil {
			continue
		}
		seen[svc.Name] = true
		st, ok := s.state[svc.Name]
		if !ok {
			st.replicas = min(max(svc.Replicas, svc.Scale.Min, 1), svc.Scale.Max)
		}
		want := wantReplicas(*svc.Scale, load[svc.Name])
		st.replicas = min(max(st.replicas, svc.Scale.Min, 1), svc.Scale.Max) // bounds may have changed
		switch {
		case want > st.replicas:
			st.replicas, st.lowSince = want, time.Time{}
		case want == st.replicas:
			st.lowSince = time.Time{}
		case st.lowSince.IsZero():
			st.lowSince = now
		case now.Sub(st.lowSince) >= s.downDelay:
			st.replicas, st.lowSince = want, time.Time{}
		}
		s.state[svc.Name] = st
		if st.replicas != svc.Replicas {
			if out == nil {
				cp := *spec
				cp.Services = append([]shoal.Service(nil), spec.Services...)
				out = &cp
			}
			out.Services[i].Replicas = st.replicas
		}
	}
	for name := range s.state {
		if !seen[name] {
			delete(s.state, name)
		}
	}
	if out == nil {
		return spec
	}
	return out
}
