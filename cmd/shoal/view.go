package main

import (
	"sort"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
)

// The JSON documents the agent API serves and the CLI reads. They are plain
// data, sorted wherever a person or a peer compares them.

// nodeStatus is GET /v1/status: this node's view of itself.
type nodeStatus struct {
	Node      string           `json:"node"`
	Addr      string           `json:"addr"`
	Version   string           `json:"version"`
	Revision  string           `json:"revision"` // commit in force
	SpecHash  string           `json:"spec_hash"`
	Sync      syncStatus       `json:"sync"`
	Instances []shoal.Instance `json:"instances"`
	Unplaced  []unplacedSlot   `json:"unplaced"`
	Errors    []string         `json:"errors"`
}

// syncStatus is the part of gitsync's status a person needs.
type syncStatus struct {
	Commit     string    `json:"commit"`
	LastFetch  time.Time `json:"last_fetch"`
	LastError  string    `json:"last_error,omitempty"`
	ErrorSince time.Time `json:"error_since,omitzero"`
	Verified   bool      `json:"verified"`
	Signer     string    `json:"signer,omitempty"`
}

type unplacedSlot struct {
	Service string `json:"service"`
	Slot    int    `json:"slot"`
	Reason  string `json:"reason"`
}

// memberView is one row of GET /v1/members.
type memberView struct {
	Name     string            `json:"name"`
	Addr     string            `json:"addr"`
	Status   string            `json:"status"`
	Revision string            `json:"revision"`
	CPU      float64           `json:"cpu"`
	Memory   shoal.Bytes       `json:"memory"`
	Labels   map[string]string `json:"labels,omitempty"`
	APIPort  int               `json:"api_port"`
}

// fleetStatus is GET /v1/fleet: the whole fleet at a glance, as this node
// sees it.
type fleetStatus struct {
	Node     string          `json:"node"` // the node that answered
	Revision string          `json:"revision"`
	Members  []memberView    `json:"members"`
	Services []serviceStatus `json:"services"`
	Unplaced []unplacedSlot  `json:"unplaced"`
	Errors   []string        `json:"errors"`
}

// serviceStatus counts one service's slots: desired by the placement,
// running and healthy by the gossiped records.
type serviceStatus struct {
	Name    string        `json:"name"`
	Desired int           `json:"desired"`
	Running int           `json:"running"`
	Healthy int           `json:"healthy"`
	Nodes   []serviceNode `json:"nodes"`
}

type serviceNode struct {
	Node    string `json:"node"`
	Desired int    `json:"desired"`
	Running int    `json:"running"`
	Healthy int    `json:"healthy"`
}

// summarize counts desired slots per node from the placement and running
// and healthy slots per node from the records. It is pure, so the counting
// rules are tested on their own.
func summarize(desired map[shoal.Slot]string, records []shoal.Record) []serviceStatus {
	type key struct{ svc, node string }
	type counts struct{ desired, running, healthy int }
	per := map[key]*counts{}
	get := func(k key) *counts {
		c := per[k]
		if c == nil {
			c = &counts{}
			per[k] = c
		}
		return c
	}
	for slot, node := range desired {
		get(key{slot.Service, node}).desired++
	}
	// A slot with several ports has several records; count it once.
	seen := map[string]bool{}
	for _, r := range records {
		if node.IsRunRecord(r) {
			continue // a job run, not a service instance
		}
		id := r.Node + "/" + shoal.Slot{Service: r.Service, Index: r.Slot}.String()
		if seen[id] {
			continue
		}
		seen[id] = true
		c := get(key{r.Service, r.Node})
		c.running++
		if r.Healthy {
			c.healthy++
		}
	}
	bySvc := map[string]*serviceStatus{}
	for k, c := range per {
		s := bySvc[k.svc]
		if s == nil {
			s = &serviceStatus{Name: k.svc}
			bySvc[k.svc] = s
		}
		s.Desired += c.desired
		s.Running += c.running
		s.Healthy += c.healthy
		s.Nodes = append(s.Nodes, serviceNode{Node: k.node, Desired: c.desired, Running: c.running, Healthy: c.healthy})
	}
	out := make([]serviceStatus, 0, len(bySvc))
	for _, s := range bySvc {
		sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Node < s.Nodes[j].Node })
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
