package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/placement"
	"github.com/shoal-run/shoal/runtime"
)

// agent wires the pieces of one node: specs from Git, the fleet from gossip,
// the placement computed from both, the node's share run in containerd, and
// records of what runs published back to the fleet.
//
// All decisions are made in step, from values: the latest revision, the
// members, the records and the local instances. Every input change — a new
// revision, a membership or record change, an instance change, a timer —
// only pokes a channel that makes the loop call step again.
type agent struct {
	cfg  agentConfig
	log  *slog.Logger
	addr string // advertised address of this node

	sync *gitsync.Syncer
	rt   *runtime.Runtime
	mesh *mesh.Mesh
	dns  *mesh.DNS
	cdns *mesh.DNS // on port 53, for containers' resolv.conf; nil when off
	lb   *mesh.Balancer

	parts agentParts

	poke       chan struct{}
	scaler     autoscaler
	loadSent   map[string]float64 // rates last published, by service
	loadSentAt time.Time
	startedAt  time.Time

	mu        sync.Mutex
	rev       *shoal.Revision
	plan      *placement.Placement
	held      map[shoal.Slot]time.Time // make-before-break: moved slots still running here
	draining  map[shoal.Slot]time.Time // leaving this node: records withdrawn, stopping soon
	lastWant  map[shoal.Slot]runtime.Desired
	proven    map[shoal.Slot]runtime.Desired // the last definition a slot served healthy with here
	reverted  map[string]string              // service → definition hash auto_revert gave up on
	jobs      jobState
	announced string
	m         counters
}

// counters are the agent's own totals for /metrics.
type counters struct {
	plans, reconciles float64
	planTime          time.Duration
}

func (a *agent) wake() {
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// onRevision is gitsync's callback: record the revision, tell the fleet.
func (a *agent) onRevision(rev *shoal.Revision) {
	a.mu.Lock()
	a.rev = rev
	announce := rev.Commit != a.announced
	a.announced = rev.Commit
	a.mu.Unlock()
	a.log.Info("revision in force", "commit", rev.Short(), "spec", rev.SpecHash[:12], "services", len(rev.Spec.Services), "jobs", len(rev.Spec.Jobs))
	if announce {
		if err := a.mesh.Announce(rev.Commit); err != nil {
			a.log.Warn("announce revision", "commit", rev.Short(), "err", err)
		}
	}
	a.wake()
}

// onAnnounce is the mesh's callback: a peer saw a new commit.
func (a *agent) onAnnounce(commit string) {
	a.mu.Lock()
	known := a.rev != nil && a.rev.Commit == commit
	a.mu.Unlock()
	if !known {
		a.sync.Announce(commit)
	}
}

// loop runs step on every poke and at least every second, which bounds
// handoff timeouts and cron ticks.
func (a *agent) loop(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.poke:
		case <-a.mesh.Changes():
		case <-a.rt.Changes():
		case <-tick.C:
		}
		a.step(time.Now())
	}
}

// step recomputes the placement and hands the runtime this node's share.
func (a *agent) step(now time.Time) {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()

	if !a.rt.Observed() {
		// Not a look at containerd yet: an empty set published now would
		// take the records of the containers kept through a restart off
		// every peer, and a plan would see their slots unserved.
		return
	}
	instances := a.rt.Instances()
	a.mesh.SetLocalRecords(a.publishable(instances))
	if rev == nil {
		return // nothing verified yet: run nothing new, touch nothing
	}
	if !a.mesh.Joined() && now.Sub(a.startedAt) < joinWait {
		return // a plan before joining would put the whole fleet here
	}

	a.publishLoad(rev.Spec, now)
	spec := a.scaler.apply(rev.Spec, a.mesh.Load(), now)
	nodes := a.mesh.Nodes()
	t0 := time.Now()
	plan := placement.Plan(spec, nodes)
	planTime := time.Since(t0)

	var mine []shoal.Slot
	for _, as := range plan.ForNode(a.cfg.NodeName) {
		mine = append(mine, shoal.Slot{Service: as.Service, Index: as.Slot})
	}
	var running []shoal.Slot
	for _, in := range instances {
		running = append(running, in.Slot)
	}
	records := a.mesh.Records()
	healthy := map[string]bool{}
	for _, r := range records {
		if r.Healthy {
			healthy[r.Node+"/"+shoal.Slot{Service: r.Service, Index: r.Slot}.String()] = true
		}
	}
	a.mu.Lock()
	keep, held := handoff(mine, plan.NodeOf, running,
		func(node string, s shoal.Slot) bool { return healthy[node+"/"+s.String()] },
		a.held, now, a.cfg.HandoffTimeout)
	a.held = held
	jobRuns := a.jobs.due(rev.Spec, a.mesh.Members(), plan, records, instances, now)
	a.plan = plan
	a.m.plans++
	a.m.reconciles++
	a.m.planTime += planTime
	a.mu.Unlock()

	// Deregister before stopping: a slot leaving this node first drops out
	// of its records, and stops only after drainDelay, by when every
	// balancer has stopped sending it new connections.
	kept := map[shoal.Slot]bool{}
	for _, s := range keep {
		kept[s] = true
	}
	a.mu.Lock()
	draining, stillUp := drain(instances, kept, a.draining, now, drainDelay)
	a.draining = draining
	a.mu.Unlock()
	keep = append(keep, stillUp...)
	var want []runtime.Desired
	a.mu.Lock()
	lastWant, proven := a.lastWant, a.proven
	reverted := map[string]string{}
	for _, svc := range rev.Spec.Services {
		if h, ok := a.reverted[svc.Name]; ok && h == svc.Hash() {
			reverted[svc.Name] = h // a new definition gets a new chance
		}
	}
	a.mu.Unlock()
	for _, s := range keep {
		if svc := rev.Spec.Service(s.Service); svc != nil {
			d := runtime.Desired{Slot: s, Service: *svc}
			if old, ok := proven[s]; ok && old.Service.Hash() != svc.Hash() && servesWith(instances, s, old.Service.Hash()) {
				hash := svc.Hash()
				switch {
				case svc.Update.AutoRevert && (reverted[svc.Name] == hash || newFailed(instances, s, hash)):
					// The new version failed here: back to the old one
					// while this definition is in force.
					if reverted[svc.Name] != hash {
						a.log.Warn("new version failed; reverted (auto_revert)", "service", svc.Name, "slot", s.String(), "spec", shoal.ShortSpec(hash))
						reverted[svc.Name] = hash
					}
					d = old
				case !mayReplace(*svc, s.Index, records):
					d = old // not this slot's turn in the rolling update
				}
			}
			want = append(want, d)
		} else if d, ok := lastWant[s]; ok {
			want = append(want, d) // a removed service drains too
		}
	}
	a.mu.Lock()
	a.reverted = reverted
	a.lastWant = map[shoal.Slot]runtime.Desired{}
	a.proven = map[shoal.Slot]runtime.Desired{}
	for _, d := range want {
		a.lastWant[d.Slot] = d
		if servesWith(instances, d.Slot, d.Service.Hash()) {
			a.proven[d.Slot] = d
		} else if p, ok := proven[d.Slot]; ok {
			a.proven[d.Slot] = p
		}
	}
	a.mu.Unlock()
	a.mesh.SetLocalRecords(a.publishable(instances))
	want = append(want, jobRuns...)
	a.rt.SetDesired(rev.Commit, want)
	routes := routesOf(rev.Spec)
	a.lb.SetRoutes(routes)
	ports := make([]int, len(routes))
	for i, r := range routes {
		ports[i] = r.Port
	}
	if err := a.rt.AllowServicePorts(ports); err != nil {
		a.log.Warn("let containers reach the balancer", "err", err)
	}
	a.mesh.SetRevision(rev.Commit)
}

// loadEvery is how often a node tells the fleet its balancer's traffic to
// autoscaled services.
const loadEvery = 2 * time.Second

// publishLoad gossips this node's new-connection rates to the services
// that autoscale, every loadEvery while there is (or just was) traffic.
func (a *agent) publishLoad(spec *shoal.Spec, now time.Time) {
	if now.Sub(a.loadSentAt) < loadEvery {
		return
	}
	stats := a.lb.Stats()
	rates := map[string]float64{}
	busy := false
	for _, svc := range spec.Services {
		if svc.Scale == nil {
			continue
		}
		r := stats[svc.Name].Rate
		if r > 0 || a.loadSent[svc.Name] > 0 {
			rates[svc.Name] = r
			busy = busy || r > 0 || a.loadSent[svc.Name] > 0
		}
	}
	if !busy {
		return
	}
	if err := a.mesh.PublishLoad(rates); err != nil {
		a.log.Warn("publish traffic", "err", err)
	}
	a.loadSent, a.loadSentAt = rates, now
}

// joinWait bounds how long a starting agent waits to join its peers
// before it runs its share anyway (a fleet of one, or peers all down).
const joinWait = 10 * time.Second

// drainDelay is how long a slot leaving this node stays up after its
// records are withdrawn: gossip reaches the fleet in well under a second.
const drainDelay = time.Second

// publishable are the records of the local instances that are not
// draining.
func (a *agent) publishable(instances []shoal.Instance) []shoal.Record {
	a.mu.Lock()
	defer a.mu.Unlock()
	var live []shoal.Instance
	for _, in := range instances {
		if _, d := a.draining[in.Slot]; !d {
			live = append(live, in)
		}
	}
	return append(shoal.RecordsFor(a.cfg.NodeName, a.addr, live), a.jobs.records...)
}

// Status implements agentView.
func (a *agent) Status() nodeStatus {
	a.mu.Lock()
	rev, plan := a.rev, a.plan
	a.mu.Unlock()
	st := nodeStatus{Node: a.cfg.NodeName, Addr: a.addr, Version: version, Instances: a.rt.Instances(), Errors: a.errorList()}
	if rev != nil {
		st.Revision, st.SpecHash = rev.Commit, rev.SpecHash
	}
	st.Sync = toSyncStatus(a.sync.Status())
	if plan != nil {
		st.Unplaced = unplacedOf(plan)
	}
	if st.Instances == nil {
		st.Instances = []shoal.Instance{}
	}
	return st
}

func toSyncStatus(s gitsync.Status) syncStatus {
	out := syncStatus{Commit: s.Commit, LastFetch: s.LastFetch, Verified: s.Verified, Signer: s.Signer}
	if s.Error != nil {
		out.LastError = s.Error.Error()
		out.ErrorSince = s.Error.Since
	}
	return out
}

func unplacedOf(p *placement.Placement) []unplacedSlot {
	out := []unplacedSlot{}
	for _, u := range p.Unplaced {
		out = append(out, unplacedSlot{Service: u.Service, Slot: u.Slot, Reason: u.Reason})
	}
	return out
}

// errorList is what keeps this node from running the newest spec as it
// should: sync errors (with spec errors located by file and line) and
// unplaced slots are reported separately.
func (a *agent) errorList() []string {
	errs := []string{}
	if e := a.sync.Status().Error; e != nil {
		errs = append(errs, fmt.Sprintf("%s: %s", a.cfg.NodeName, e.Error()))
		for _, f := range e.Fields {
			errs = append(errs, fmt.Sprintf("%s:   %s", a.cfg.NodeName, f.Error()))
		}
	}
	var reverts []string
	a.mu.Lock()
	for svc, h := range a.reverted {
		reverts = append(reverts, fmt.Sprintf("%s: %s: definition %s failed its health checks; running the previous one (auto_revert)", a.cfg.NodeName, svc, shoal.ShortSpec(h)))
	}
	a.mu.Unlock()
	sort.Strings(reverts)
	return append(errs, reverts...)
}

// Fleet implements agentView.
func (a *agent) Fleet() fleetStatus {
	a.mu.Lock()
	rev, plan := a.rev, a.plan
	a.mu.Unlock()
	f := fleetStatus{Node: a.cfg.NodeName, Members: a.Members(), Errors: a.errorList(), Unplaced: []unplacedSlot{}}
	desired := map[shoal.Slot]string{}
	if rev != nil {
		f.Revision = rev.Commit
	}
	if plan != nil {
		for _, as := range plan.Assignments {
			desired[shoal.Slot{Service: as.Service, Index: as.Slot}] = as.Node
		}
		f.Unplaced = unplacedOf(plan)
	}
	f.Services = summarize(desired, a.mesh.Records())
	// Another node's errors show through its revision lagging: a member
	// not at this node's revision is named, so `shoal status` shows it.
	for _, m := range f.Members {
		if rev != nil && m.Status == "alive" && m.Revision != rev.Commit {
			f.Errors = append(f.Errors, fmt.Sprintf("%s: runs revision %s, not %s", m.Name, short(m.Revision), short(rev.Commit)))
		}
	}
	sort.Strings(f.Errors)
	return f
}

// Members implements agentView.
func (a *agent) Members() []memberView {
	var out []memberView
	for _, m := range a.mesh.Members() {
		out = append(out, memberView{
			Name: m.Node.Name, Addr: m.Addr, Status: m.Status, Revision: m.Revision,
			CPU: m.Node.CPU, Memory: m.Node.Memory, Labels: m.Node.Labels, APIPort: m.APIPort,
		})
	}
	if out == nil {
		out = []memberView{}
	}
	return out
}

// routesOf is every service port the balancer serves.
func routesOf(spec *shoal.Spec) []mesh.Route {
	var rs []mesh.Route
	for _, svc := range spec.Services {
		for _, p := range svc.Ports {
			rs = append(rs, mesh.Route{Service: svc.Name, PortName: p.Name, Port: p.Port})
		}
	}
	return rs
}

// Records implements agentView.
func (a *agent) Records() []shoal.Record { return a.mesh.Records() }

// Logs implements agentView.
func (a *agent) Logs(slot shoal.Slot, follow bool) (io.ReadCloser, error) {
	return a.rt.Logs(slot, follow)
}
