package main

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
)

// handoff is make-before-break for slots that move between nodes. Given this
// node's share of the new placement and the slots it still runs, it returns
// the slots to keep running: its share, plus each slot that moved to another
// node whose copy is not yet healthy in the records, for at most timeout
// from when the move was first seen. since carries those first-seen times
// between calls; the returned map replaces it.
//
// A slot that no longer exists in the placement (scaled down, service
// removed, unplaceable) has no new copy to wait for and stops at once.
func handoff(mine []shoal.Slot, owner func(shoal.Slot) (string, bool), running []shoal.Slot,
	healthy func(node string, slot shoal.Slot) bool, since map[shoal.Slot]time.Time,
	now time.Time, timeout time.Duration) (keep []shoal.Slot, held map[shoal.Slot]time.Time) {

	want := make(map[shoal.Slot]bool, len(mine))
	for _, s := range mine {
		want[s] = true
		keep = append(keep, s)
	}
	held = map[shoal.Slot]time.Time{}
	for _, s := range running {
		if want[s] {
			continue
		}
		node, ok := owner(s)
		if !ok || healthy(node, s) {
			continue
		}
		first, waiting := since[s]
		if !waiting {
			first = now
		}
		if now.Sub(first) >= timeout {
			continue
		}
		held[s] = first
		keep = append(keep, s)
	}
	sort.Slice(keep, func(i, j int) bool {
		if keep[i].Service != keep[j].Service {
			return keep[i].Service < keep[j].Service
		}
		return keep[i].Index < keep[j].Index
	})
	return keep, held
}

// drain withdraws the instances that are not kept: each stays out of the
// records from when it was first seen leaving until it is gone, and keeps
// running for delay (so balancers stop sending it new connections before
// it stops). since carries the first-seen times; the returned map
// replaces it. A slot dropped from since while its container still stops
// would be published again, then kept again: a copy flickering back.
func drain(instances []shoal.Instance, kept map[shoal.Slot]bool, since map[shoal.Slot]time.Time,
	now time.Time, delay time.Duration) (draining map[shoal.Slot]time.Time, stillUp []shoal.Slot) {

	draining = map[shoal.Slot]time.Time{}
	for _, in := range instances {
		if kept[in.Slot] || in.State == shoal.StateExited {
			continue
		}
		first, ok := draining[in.Slot]
		if !ok {
			first, ok = since[in.Slot]
		}
		if !ok {
			first = now
		}
		if _, seen := draining[in.Slot]; !seen && now.Sub(first) < delay {
			stillUp = append(stillUp, in.Slot)
		}
		draining[in.Slot] = first
	}
	return draining, stillUp
}
