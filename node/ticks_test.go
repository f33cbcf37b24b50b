package node_test

import (
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
)

func utc(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04:05", s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestLatestTick(t *testing.T) {
	for _, tc := range []struct {
		name, sched string
		after, now  string
		want        string // "" for no tick
	}{
		{"5-field", "*/15 * * * *", "2026-03-01 10:00:00", "2026-03-01 10:44:59", "2026-03-01 10:30:00"},
		{"5-field on the tick", "*/15 * * * *", "2026-03-01 10:00:00", "2026-03-01 10:45:00", "2026-03-01 10:45:00"},
		{"5-field none yet", "*/15 * * * *", "2026-03-01 10:00:00", "2026-03-01 10:14:59", ""},
		{"after is exclusive", "*/15 * * * *", "2026-03-01 10:15:00", "2026-03-01 10:20:00", ""},
		{"seconds field", "*/20 * * * * *", "2026-03-01 10:00:00", "2026-03-01 10:00:59", "2026-03-01 10:00:40"},
		{"@hourly", "@hourly", "2026-03-01 10:00:00", "2026-03-01 12:30:00", "2026-03-01 12:00:00"},
		{"@daily catch-up is one tick", "@daily", "2026-03-01 00:00:00", "2026-03-09 08:00:00", "2026-03-09 00:00:00"},
		{"@monthly long gap", "@monthly", "2025-01-01 00:00:00", "2026-03-09 08:00:00", "2026-03-01 00:00:00"},
		{"@yearly", "@yearly", "2020-06-01 00:00:00", "2026-03-09 08:00:00", "2026-01-01 00:00:00"},
		// @every is on a grid from the Unix epoch, not from when a node looked.
		{"@every on the epoch grid", "@every 5s", "2026-03-01 10:00:01", "2026-03-01 10:00:07", "2026-03-01 10:00:05"},
		{"@every looked at every second", "@every 5s", "2026-03-01 10:00:05", "2026-03-01 10:00:06", ""},
		{"@every 25m", "@every 25m", "2026-03-01 10:00:00", "2026-03-01 11:00:00", "2026-03-01 10:55:00"}, // 25m multiples since 1970,
		{"@every sub-second floors to 1s", "@every 100ms", "2026-03-01 10:00:00", "2026-03-01 10:00:02.5", "2026-03-01 10:00:02"},
		{"CRON_TZ", "CRON_TZ=Europe/Paris 30 11 * * *", "2026-03-01 00:00:00", "2026-03-01 12:00:00", "2026-03-01 10:30:00"},             // CET = UTC+1
		{"CRON_TZ summer time", "CRON_TZ=Europe/Paris 30 11 * * *", "2026-07-01 00:00:00", "2026-07-01 12:00:00", "2026-07-01 09:30:00"}, // CEST = UTC+2
		{"TZ= prefix", "TZ=Asia/Tokyo 0 9 * * *", "2026-02-28 12:00:00", "2026-03-01 12:00:00", "2026-03-01 00:00:00"},
		// Spring forward: 02:30 does not exist in Paris on 29 March; robfig/cron skips it that day.
		{"DST gap skipped", "CRON_TZ=Europe/Paris 30 2 * * *", "2026-03-28 02:00:00", "2026-03-29 23:00:00", ""},
		{"DST gap next day", "CRON_TZ=Europe/Paris 30 2 * * *", "2026-03-28 02:00:00", "2026-03-30 01:00:00", "2026-03-30 00:30:00"},
		// Fall back: 02:30 happens twice on 25 October, an hour apart; both are ticks.
		{"DST overlap first", "CRON_TZ=Europe/Paris 30 2 * * *", "2026-10-24 12:00:00", "2026-10-25 01:00:00", "2026-10-25 00:30:00"},
		{"DST overlap second", "CRON_TZ=Europe/Paris 30 2 * * *", "2026-10-25 00:30:00", "2026-10-25 02:00:00", "2026-10-25 01:30:00"},
		{"now before after", "* * * * *", "2026-03-01 10:00:00", "2026-03-01 09:00:00", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := shoal.ParseSchedule(tc.sched)
			if err != nil {
				t.Fatal(err)
			}
			now := utc(tc.now[:19])
			if len(tc.now) > 19 {
				d, _ := time.ParseDuration("0" + tc.now[19:] + "s")
				now = now.Add(d)
			}
			got, ok := node.LatestTick(s, utc(tc.after), now)
			if tc.want == "" {
				if ok {
					t.Fatalf("got tick %s, want none", got.UTC())
				}
				return
			}
			if !ok || !got.Equal(utc(tc.want)) {
				t.Fatalf("got %s (%v), want %s", got.UTC(), ok, tc.want)
			}
		})
	}
}

// Every tick LatestTick names is one NextTick names, so nodes that look at
// different moments agree on the grid.
func TestTicksSameGridWhenEverLooked(t *testing.T) {
	for _, sched := range []string{"@every 7s", "*/3 * * * * *", "CRON_TZ=America/New_York */10 * * * *"} {
		s, err := shoal.ParseSchedule(sched)
		if err != nil {
			t.Fatal(err)
		}
		start := utc("2026-03-01 10:00:00")
		want := map[time.Time]bool{}
		for tk := node.NextTick(s, start); tk.Before(start.Add(time.Hour)); tk = node.NextTick(s, tk) {
			want[tk.UTC()] = true
		}
		got := map[time.Time]bool{}
		after := start
		// Look at uneven moments, as nodes stepping about once a second do.
		for now := start; now.Before(start.Add(time.Hour)); now = now.Add(1300 * time.Millisecond) {
			if tk, ok := node.LatestTick(s, after, now); ok {
				got[tk.UTC()] = true
				after = tk
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s: saw %d ticks, want %d", sched, len(got), len(want))
		}
		for tk := range got {
			if !want[tk] {
				t.Fatalf("%s: tick %s is off the grid", sched, tk)
			}
		}
	}
}
