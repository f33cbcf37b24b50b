package node

import (
	"strings"
	"time"

	"github.com/shoal-run/shoal"
)

// A job run travels through the fleet as a shoal.Record with no port: the
// job's name as Service, the tick's Unix time as Slot, and one of these
// kinds as PortName; its Addr is the node's, like its service records',
// or peers drop it (the mesh believes a node's records only at the node's
// own address). DNS and the balancer use healthy records only, and a
// run record is never healthy, so nothing routes to it.
const (
	// KindRunning: the node runs (or is starting) this tick's run.
	KindRunning = "job.run"
	// KindManual: the node runs a manual run (shoal jobs run); it counts
	// for concurrency, never for which ticks are done.
	KindManual = "job.manual"
	// KindDone: the latest scheduled tick this node ran to its end. With
	// the running ones, it tells every node which ticks the fleet took.
	KindDone = "job.done"
)

// RunRecord is a decoded run record.
type RunRecord struct {
	Job  string
	Tick time.Time
	Node string
	Kind string
}

// IsRunRecord reports whether r is a job run's record, not a service's.
func IsRunRecord(r shoal.Record) bool {
	return r.Port == 0 && strings.HasPrefix(r.PortName, "job.")
}

// ParseRunRecord decodes a run record.
func ParseRunRecord(r shoal.Record) (RunRecord, bool) {
	if !IsRunRecord(r) {
		return RunRecord{}, false
	}
	switch r.PortName {
	case KindRunning, KindManual, KindDone:
	default:
		return RunRecord{}, false
	}
	return RunRecord{Job: r.Service, Tick: time.Unix(int64(r.Slot), 0).UTC(), Node: r.Node, Kind: r.PortName}, true
}

func runRecord(self, addr, job string, tick time.Time, kind string) shoal.Record {
	return shoal.Record{Service: job, Slot: int(tick.Unix()), Node: self, Addr: addr, PortName: kind}
}
