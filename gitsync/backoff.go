package gitsync

import "time"

// backoffDelay is the wait before retry number attempt (1 for the first
// retry): min doubling from base, capped at max.
func backoffDelay(attempt int, base, max time.Duration) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := base
	for i := 1; i < attempt; i++ {
		d *= 2
		if d >= max || d <= 0 {
			return max
		}
	}
	if d > max {
		return max
	}
	return d
}

// jitter spreads d by ±10 %: u in [0,1) maps to [0.9d, 1.1d).
func jitter(d time.Duration, u float64) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*u))
}
