package shoal_test

import (
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

func TestDueTicks(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		sched     string
		after, to time.Time
		limit     int
		want      []string
	}{
		{"*/15 * * * *", t0, t0.Add(time.Hour), 10, []string{"10:15", "10:30", "10:45", "11:00"}},
		{"*/15 * * * *", t0, t0.Add(14 * time.Minute), 10, nil},
		{"*/15 * * * *", t0, t0.Add(time.Hour), 2, []string{"10:45", "11:00"}},
		{"*/20 * * * * *", t0, t0.Add(time.Minute), 10, []string{"10:00:20", "10:00:40", "10:01:00"}},
		{"CRON_TZ=Europe/Paris 30 11 * * *", t0, t0.Add(2 * time.Hour), 10, []string{"10:30"}}, // 11:30 CET = 10:30 UTC
		{"@every 25m", t0, t0.Add(time.Hour), 10, []string{"10:25", "10:50"}},
	} {
		s, err := shoal.ParseSchedule(tc.sched)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, tick := range shoal.DueTicks(s, tc.after, tc.to, tc.limit) {
			f := "15:04"
			if tick.Second() != 0 {
				f = "15:04:05"
			}
			if len(tc.want) > 0 && len(tc.want[0]) == 8 {
				f = "15:04:05"
			}
			got = append(got, tick.UTC().Format(f))
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: got %v, want %v", tc.sched, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: got %v, want %v", tc.sched, got, tc.want)
				break
			}
		}
	}
}
