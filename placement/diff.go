package placement

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
)

// Move is a slot that changes node.
type Move struct {
	Service string `json:"service"`
	Slot    int    `json:"slot"`
	From    string `json:"from"`
	To      string `json:"to"`
}

// Changes is what turning one placement into another does, each list
// sorted by service then slot.
type Changes struct {
	Added   []Assignment `json:"added"`
	Removed []Assignment `json:"removed"`
	Moved   []Move       `json:"moved"`
}

// Empty reports whether nothing changes.
func (c Changes) Empty() bool { return len(c.Added)+len(c.Removed)+len(c.Moved) == 0 }

// Diff compares two placements slot by slot.
func Diff(old, new *Placement) Changes {
	c := Changes{Added: []Assignment{}, Removed: []Assignment{}, Moved: []Move{}}
	was := map[shoal.Slot]string{}
	for _, a := range old.Assignments {
		was[shoal.Slot{Service: a.Service, Index: a.Slot}] = a.Node
	}
	for _, a := range new.Assignments {
		s := shoal.Slot{Service: a.Service, Index: a.Slot}
		from, ok := was[s]
		switch {
		case !ok:
			c.Added = append(c.Added, a)
		case from != a.Node:
			c.Moved = append(c.Moved, Move{Service: a.Service, Slot: a.Slot, From: from, To: a.Node})
		}
		delete(was, s)
	}
	for s, node := range was {
		c.Removed = append(c.Removed, Assignment{Service: s.Service, Slot: s.Index, Node: node})
	}
	sort.Slice(c.Removed, func(i, j int) bool {
		a, b := c.Removed[i], c.Removed[j]
		return a.Service < b.Service || (a.Service == b.Service && a.Slot < b.Slot)
	})
	return c
}

// Runner returns the node that runs a cron job's tick: the first of
// RunnerRank. Every node computes the same runner from the same members,
// so each tick runs once.
func Runner(job *shoal.Job, tick time.Time, nodes []shoal.Node) (string, bool) {
	rank := RunnerRank(job, tick, nodes)
	if len(rank) == 0 {
		return "", false
	}
	return rank[0], true
}

// RunnerRank orders the nodes that may run a cron job's tick, best first:
// by weighted rendezvous score for (job, tick) among the nodes that match
// the job's constraints and could hold its resources at all. When the
// first cannot take the tick, the next in rank does.
func RunnerRank(job *shoal.Job, tick time.Time, nodes []shoal.Node) []string {
	key := slotKey(hashString(job.Name), int(tick.Unix()))
	type cand struct {
		name  string
		score float64
	}
	var cs []cand
	for _, n := range nodes {
		w := Weight(n)
		if w <= 0 || !matches(n, job.Constraints) || n.CPU+cpuEpsilon < job.Resources.CPU || n.Memory < job.Resources.Memory {
			continue
		}
		cs = append(cs, cand{n.Name, score(w, mix64(key^hashString(n.Name)))})
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].score != cs[j].score {
			return cs[i].score > cs[j].score
		}
		return cs[i].name < cs[j].name
	})
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.name
	}
	return out
}
