package main

import "github.com/shoal-run/shoal"

// Rolling updates. A changed service is replaced slot by slot in index
// order, in batches: a slot may take the new definition once every slot of
// an earlier batch runs it and is healthy in the records. A batch is
// max_surge slots (new copies start beside the old ones), or
// max_unavailable slots — at least one — when max_surge is 0 and old
// copies stop first. Every node reads the same records, so the order needs
// no coordination; a batch whose new version never gets healthy stops the
// rollout with the remaining old copies serving.

// rollBatch is how many slots of a service update at once, fleet-wide.
func rollBatch(u shoal.UpdateStrategy) int {
	if u.MaxSurge > 0 {
		return u.MaxSurge
	}
	return max(u.MaxUnavailable, 1)
}

// mayReplace reports whether slot index of svc may move to svc's
// definition now, given the fleet's records.
func mayReplace(svc shoal.Service, index int, records []shoal.Record) bool {
	k := rollBatch(svc.Update)
	first := index / k * k // the first slot of index's batch
	if first == 0 {
		return true
	}
	spec := shoal.ShortSpec(svc.Hash())
	done := map[int]bool{}
	for _, r := range records {
		if r.Service == svc.Name && r.Healthy && r.Spec == spec {
			done[r.Slot] = true
		}
	}
	for j := 0; j < first; j++ {
		if !done[j] {
			return false
		}
	}
	return true
}

// newFailed reports whether slot s's copy of the definition with hash
// spec has failed: exited, restarted, or unhealthy past its start grace.
func newFailed(instances []shoal.Instance, s shoal.Slot, spec string) bool {
	for _, in := range instances {
		if in.Slot == s && in.SpecHash == spec {
			switch in.State {
			case shoal.StateUnhealthy, shoal.StateCrashLoop, shoal.StateExited:
				return true
			}
			if in.Restarts > 0 {
				return true
			}
		}
	}
	return false
}

// servesWith reports whether slot s has a healthy local copy of the
// definition with hash old: a definition proven here, worth holding on to.
func servesWith(instances []shoal.Instance, s shoal.Slot, old string) bool {
	for _, in := range instances {
		if in.Slot == s && in.SpecHash == old && in.State == shoal.StateHealthy {
			return true
		}
	}
	return false
}
