package main

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
)

func TestHandoff(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	web := func(i int) shoal.Slot { return shoal.Slot{Service: "web", Index: i} }
	owners := map[shoal.Slot]string{web(0): "self", web(1): "n2", web(2): "n3"}
	owner := func(s shoal.Slot) (string, bool) { n, ok := owners[s]; return n, ok }
	for _, tc := range []struct {
		name    string
		running []shoal.Slot
		healthy map[string]bool // "node/slot"
		since   map[shoal.Slot]time.Time
		now     time.Time
		keep    []shoal.Slot
		held    map[shoal.Slot]time.Time
	}{
		{
			name: "nothing running: just my share",
			now:  t0, keep: []shoal.Slot{web(0)}, held: map[shoal.Slot]time.Time{},
		},
		{
			name:    "moved slot kept while new copy is not healthy",
			running: []shoal.Slot{web(0), web(1)},
			now:     t0, keep: []shoal.Slot{web(0), web(1)}, held: map[shoal.Slot]time.Time{web(1): t0},
		},
		{
			name:    "moved slot released once the new copy is healthy",
			running: []shoal.Slot{web(0), web(1)},
			healthy: map[string]bool{"n2/web/1": true},
			since:   map[shoal.Slot]time.Time{web(1): t0},
			now:     t0.Add(time.Second), keep: []shoal.Slot{web(0)}, held: map[shoal.Slot]time.Time{},
		},
		{
			name:    "healthy copy on a different node does not count",
			running: []shoal.Slot{web(1)},
			healthy: map[string]bool{"n3/web/1": true},
			since:   map[shoal.Slot]time.Time{web(1): t0},
			now:     t0.Add(time.Second), keep: []shoal.Slot{web(0), web(1)}, held: map[shoal.Slot]time.Time{web(1): t0},
		},
		{
			name:    "moved slot released after the timeout",
			running: []shoal.Slot{web(2)},
			since:   map[shoal.Slot]time.Time{web(2): t0},
			now:     t0.Add(30 * time.Second), keep: []shoal.Slot{web(0)}, held: map[shoal.Slot]time.Time{},
		},
		{
			name:    "removed slot stops at once",
			running: []shoal.Slot{web(7), {Service: "gone", Index: 0}},
			now:     t0, keep: []shoal.Slot{web(0)}, held: map[shoal.Slot]time.Time{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			healthy := func(node string, s shoal.Slot) bool { return tc.healthy[node+"/"+s.String()] }
			keep, held := handoff([]shoal.Slot{web(0)}, owner, tc.running, healthy, tc.since, tc.now, 30*time.Second)
			if !reflect.DeepEqual(keep, tc.keep) {
				t.Errorf("keep = %v, want %v", keep, tc.keep)
			}
			if fmt.Sprint(held) != fmt.Sprint(tc.held) {
				t.Errorf("held = %v, want %v", held, tc.held)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	desired := map[shoal.Slot]string{
		{Service: "web", Index: 0}: "a", {Service: "web", Index: 1}: "b", {Service: "api", Index: 0}: "a",
	}
	records := []shoal.Record{
		{Service: "web", Slot: 0, Node: "a", PortName: "http", Healthy: true},
		{Service: "web", Slot: 0, Node: "a", PortName: "admin", Healthy: true}, // same slot, 2nd port
		{Service: "web", Slot: 1, Node: "c", PortName: "http", Healthy: false}, // old copy during handoff
	}
	got := summarize(desired, records)
	want := []serviceStatus{
		{Name: "api", Desired: 1, Nodes: []serviceNode{{Node: "a", Desired: 1}}},
		{Name: "web", Desired: 2, Running: 2, Healthy: 1, Nodes: []serviceNode{
			{Node: "a", Desired: 1, Running: 1, Healthy: 1}, {Node: "b", Desired: 1}, {Node: "c", Running: 1},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestDrain(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	web := func(i int) shoal.Slot { return shoal.Slot{Service: "web", Index: i} }
	up := func(i int) shoal.Instance { return shoal.Instance{Slot: web(i), State: shoal.StateHealthy} }
	for _, tc := range []struct {
		name      string
		instances []shoal.Instance
		kept      []shoal.Slot
		since     map[shoal.Slot]time.Time
		now       time.Time
		draining  map[shoal.Slot]time.Time
		stillUp   []shoal.Slot
	}{
		{
			name:      "kept: not draining",
			instances: []shoal.Instance{up(0)}, kept: []shoal.Slot{web(0)},
			now: t0, draining: map[shoal.Slot]time.Time{},
		},
		{
			name:      "leaving: withdrawn and still up",
			instances: []shoal.Instance{up(0), up(1)}, kept: []shoal.Slot{web(0)},
			now: t0, draining: map[shoal.Slot]time.Time{web(1): t0}, stillUp: []shoal.Slot{web(1)},
		},
		{
			name:      "delay over: stopped, still withdrawn while it stops",
			instances: []shoal.Instance{up(1)}, since: map[shoal.Slot]time.Time{web(1): t0},
			now: t0.Add(time.Second), draining: map[shoal.Slot]time.Time{web(1): t0},
		},
		{
			name:      "long after: still withdrawn, never kept again",
			instances: []shoal.Instance{up(1)}, since: map[shoal.Slot]time.Time{web(1): t0},
			now: t0.Add(time.Minute), draining: map[shoal.Slot]time.Time{web(1): t0},
		},
		{
			name:  "gone: forgotten",
			since: map[shoal.Slot]time.Time{web(1): t0},
			now:   t0.Add(2 * time.Second), draining: map[shoal.Slot]time.Time{},
		},
		{
			name:      "exited: nothing to withdraw",
			instances: []shoal.Instance{{Slot: web(1), State: shoal.StateExited}},
			now:       t0, draining: map[shoal.Slot]time.Time{},
		},
		{
			name:      "back to this node while stopping: published again",
			instances: []shoal.Instance{up(1)}, kept: []shoal.Slot{web(1)}, since: map[shoal.Slot]time.Time{web(1): t0},
			now: t0.Add(2 * time.Second), draining: map[shoal.Slot]time.Time{},
		},
		{
			name:      "two copies of a slot (surge): one entry",
			instances: []shoal.Instance{up(1), up(1)},
			now:       t0, draining: map[shoal.Slot]time.Time{web(1): t0}, stillUp: []shoal.Slot{web(1)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kept := map[shoal.Slot]bool{}
			for _, s := range tc.kept {
				kept[s] = true
			}
			draining, stillUp := drain(tc.instances, kept, tc.since, tc.now, time.Second)
			if !reflect.DeepEqual(draining, tc.draining) || !reflect.DeepEqual(stillUp, tc.stillUp) {
				t.Errorf("got draining %v, still up %v; want %v, %v", draining, stillUp, tc.draining, tc.stillUp)
			}
		})
	}
}
