package runtime

import (
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

func TestProbeEvery(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := shoal.Health{Interval: shoal.Duration(10 * time.Second), Grace: shoal.Duration(5 * time.Second)}
	for _, tc := range []struct {
		name   string
		h      shoal.Health
		passed bool
		age    time.Duration
		want   time.Duration
	}{
		{"new instance, in grace", h, false, time.Second, startProbe},
		{"passed once: the spec's interval", h, true, time.Second, 10 * time.Second},
		{"grace over without a pass", h, false, 6 * time.Second, 10 * time.Second},
		{"interval already shorter", shoal.Health{Interval: shoal.Duration(50 * time.Millisecond), Grace: h.Grace}, false, 0, 50 * time.Millisecond},
		{"no grace: failures count, so no faster checks", shoal.Health{Interval: h.Interval}, false, 0, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := probeEvery(tc.h, HealthState{Passed: tc.passed}, t0, t0.Add(tc.age))
			if got != tc.want {
				t.Errorf("probeEvery = %v, want %v", got, tc.want)
			}
		})
	}
}
