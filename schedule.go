package shoal

import (
	"time"

	"github.com/robfig/cron/v3"
)

// DueTicks returns the schedule's ticks in (after, until], oldest first, at
// most limit of them. An agent that was down for a while catches up on at
// most limit ticks instead of starting a storm of runs.
func DueTicks(s cron.Schedule, after, until time.Time, limit int) []time.Time {
	var ticks []time.Time
	for t := s.Next(after); !t.IsZero() && !t.After(until); t = s.Next(t) {
		ticks = append(ticks, t)
	}
	if len(ticks) > limit {
		ticks = ticks[len(ticks)-limit:]
	}
	return ticks
}
