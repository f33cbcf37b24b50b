package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/node"
)

// The history keeps historyLen entries per job, deletes the logs of the
// runs that fall out, and seeds the cron state after a restart: a run in
// progress is a run again, and the latest tick run is known.
func TestJobHistoryBoundedAndReloaded(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	j := newJobState("n1", "10.0.0.1", dir, log, time.Now())
	if err := j.load(); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dir, "runtime", "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	n := historyLen + 5
	for i := 0; i < n; i++ {
		tick := t0.Add(time.Duration(i) * time.Minute)
		if err := os.WriteFile(filepath.Join(logDir, fmt.Sprintf("report-%d.log", tick.Unix())), []byte("out\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		j.apply(node.RunEvent{Kind: node.EventStarted, Job: "report", Tick: tick, Start: tick})
		if i < n-1 {
			j.apply(node.RunEvent{Kind: node.EventEnded, Job: "report", Tick: tick, Start: tick, End: tick.Add(time.Second), Reason: node.ReasonExited, ExitCode: i % 2})
		}
	}
	if err := j.save("report"); err != nil {
		t.Fatal(err)
	}
	if got := len(j.history("report")); got != historyLen {
		t.Fatalf("%d entries kept, want %d", got, historyLen)
	}
	logs, _ := os.ReadDir(logDir)
	if len(logs) != historyLen {
		t.Fatalf("%d run logs kept, want %d", len(logs), historyLen)
	}
	if _, err := os.Stat(filepath.Join(logDir, fmt.Sprintf("report-%d.log", t0.Unix()))); !os.IsNotExist(err) {
		t.Fatalf("the oldest run's log is still there: %v", err)
	}

	j2 := newJobState("n1", "10.0.0.1", dir, log, time.Now())
	if err := j2.load(); err != nil {
		t.Fatal(err)
	}
	last := t0.Add(time.Duration(n-1) * time.Minute)
	if _, ok := j2.cron.Runs[shoal.Slot{Service: "report", Index: int(last.Unix())}]; !ok || len(j2.cron.Runs) != 1 {
		t.Fatalf("runs after reload %+v, want the one in progress", j2.cron.Runs)
	}
	if got := j2.cron.Last["report"]; !got.Equal(last.Add(-time.Minute)) {
		t.Fatalf("last tick run %s, want %s", got, last.Add(-time.Minute))
	}
	success, failure, _ := j2.metrics()
	if success["report"] == 0 || failure["report"] == 0 || success["report"] == failure["report"] {
		t.Fatalf("last success %v, last failure %v", success, failure)
	}
}
