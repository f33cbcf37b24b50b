package node

import (
	"time"

	"github.com/robfig/cron/v3"
)

// LatestTick returns the schedule's latest tick in (after, now], or false
// when there is none. Ticks are a function of the schedule alone, never of
// when a node looked: a cron expression fixes them on the calendar (in its
// CRON_TZ zone), and "@every d" fires at the multiples of d since the Unix
// epoch, so every node, and a node after its restart, names the same ticks.
func LatestTick(s cron.Schedule, after, now time.Time) (time.Time, bool) {
	if !now.After(after) {
		return time.Time{}, false
	}
	if c, ok := s.(cron.ConstantDelaySchedule); ok {
		d := c.Delay
		if d < time.Second {
			d = time.Second // robfig/cron's own floor
		}
		t := time.Unix(0, now.UnixNano()/int64(d)*int64(d)).In(now.Location())
		if !t.After(after) {
			return time.Time{}, false
		}
		return t, true
	}
	// Widen a window back from now until it holds a tick, then walk it:
	// the walk covers at most twice the ticks of the last gap, whatever
	// the distance to after, so a week-long outage costs no more than a
	// second-long one.
	for w := time.Second; ; w *= 2 {
		from := now.Add(-w)
		if !from.After(after) {
			from = after
		}
		if t := s.Next(from); !t.IsZero() && !t.After(now) {
			last := t
			for n := s.Next(t); !n.IsZero() && !n.After(now); n = s.Next(n) {
				last = n
			}
			return last, true
		}
		if from.Equal(after) || w > maxLookBack {
			return time.Time{}, false
		}
	}
}

// maxLookBack bounds LatestTick's search: robfig/cron itself gives up on
// a schedule with no tick within five years.
const maxLookBack = 6 * 366 * 24 * time.Hour

// NextTick returns the schedule's first tick after t, on the same fixed
// grid as LatestTick.
func NextTick(s cron.Schedule, t time.Time) time.Time {
	if c, ok := s.(cron.ConstantDelaySchedule); ok {
		d := c.Delay
		if d < time.Second {
			d = time.Second
		}
		return time.Unix(0, (t.UnixNano()/int64(d)+1)*int64(d)).In(t.Location())
	}
	return s.Next(t)
}
