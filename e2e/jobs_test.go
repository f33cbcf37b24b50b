package e2e

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// jobRun is an entry of GET /v1/jobs's history.
type jobRun struct {
	Job      string    `json:"job"`
	Tick     time.Time `json:"tick"`
	Node     string    `json:"node"`
	Manual   bool      `json:"manual"`
	State    string    `json:"state"` // running, ended, skipped
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	ExitCode int       `json:"exit_code"`
	Reason   string    `json:"reason"`
}

// history is a job's runs fleet-wide as one agent gathers them.
func (h *harness) history(i int, job string) ([]jobRun, error) {
	var v struct {
		History     []jobRun          `json:"history"`
		Unreachable map[string]string `json:"unreachable"`
	}
	if err := h.api(i, "/v1/jobs?"+url.Values{"job": {job}}.Encode(), &v); err != nil {
		return nil, err
	}
	if len(v.Unreachable) > 0 {
		return nil, fmt.Errorf("history lacks %v", v.Unreachable)
	}
	return v.History, nil
}

func job(name, schedule, image, extra string) string {
	return fmt.Sprintf("name: %s\nimage: %s\nschedule: %q\nresources: {cpu: 0.1, memory: 32Mi}\n%s", name, image, schedule, extra)
}

// TestJobs runs cron jobs on the five-node fleet: a job every 3 s runs
// exactly once per tick fleet-wide for half a minute, counted from the
// fleet-wide history one agent gathers; and a forbid job whose run
// outlasts its interval never has two runs at once anywhere.
func TestJobs(t *testing.T) {
	h := start(t)
	const every = 3 * time.Second
	h.push("jobs", map[string]string{
		"tick.yaml": job("tick", "@every 3s", h.image, "env: {MESSAGE: tick}\n"),
		"slow.yaml": job("slow", "@every 3s", h.image, "concurrency: forbid\nenv: {MESSAGE: slow, SLEEP: 7s}\n"),
	})
	h.waitFor(60*time.Second, "a first run of tick", func() bool {
		rs, err := h.history(0, "tick")
		return err == nil && len(rs) > 0
	})
	// Watch from the next tick on for ~30 s.
	from := time.Now().Truncate(every).Add(every)
	time.Sleep(time.Until(from.Add(30 * time.Second)))
	to := from.Add(30 * time.Second)
	// Let the last ticks' runs start and their records settle.
	time.Sleep(2 * every)

	t.Run("once-per-tick", func(t *testing.T) {
		var rs []jobRun
		var err error
		h.t = t
		h.waitFor(10*time.Second, "the fleet's history of tick", func() bool {
			rs, err = h.history(1, "tick")
			return err == nil
		})
		perTick := map[int64][]string{} // by the tick's Unix time
		for _, r := range rs {
			if r.Manual || r.Tick.Before(from) || !r.Tick.Before(to) {
				continue
			}
			perTick[r.Tick.Unix()] = append(perTick[r.Tick.Unix()], fmt.Sprintf("%s %s %s", r.Node, r.State, r.Reason))
			if r.State == "ended" && (r.Reason != "exited" || r.ExitCode != 0) {
				t.Errorf("tick %s on %s ended %s, exit %d", r.Tick.Format(time.TimeOnly), r.Node, r.Reason, r.ExitCode)
			}
		}
		nodes := map[string]bool{}
		runs := 0
		for tk := from; tk.Before(to); tk = tk.Add(every) {
			got := perTick[tk.Unix()]
			if len(got) != 1 || strings.Contains(got[0], "skipped") {
				t.Errorf("tick %s: %v, want one run", tk.Format(time.TimeOnly), got)
				continue
			}
			runs++
			nodes[strings.Fields(got[0])[0]] = true
		}
		t.Logf("tick: %d runs in %v on %d nodes", runs, to.Sub(from), len(nodes))
	})

	t.Run("forbid-never-overlaps", func(t *testing.T) {
		var rs []jobRun
		var err error
		h.t = t
		h.waitFor(10*time.Second, "the fleet's history of slow", func() bool {
			rs, err = h.history(2, "slow")
			return err == nil
		})
		var ran []jobRun
		skipped := 0
		now := time.Now()
		for _, r := range rs {
			switch {
			case r.State == "skipped":
				skipped++
			case !r.Start.IsZero():
				if r.End.IsZero() {
					r.End = now // still running
				}
				ran = append(ran, r)
			}
		}
		sort.Slice(ran, func(i, j int) bool { return ran[i].Start.Before(ran[j].Start) })
		for i := 1; i < len(ran); i++ {
			if p, r := ran[i-1], ran[i]; r.Start.Before(p.End) {
				t.Errorf("run of %s on %s started at %s, while the run of %s on %s went on until %s",
					r.Tick.Format(time.TimeOnly), r.Node, r.Start.Format(time.StampMilli),
					p.Tick.Format(time.TimeOnly), p.Node, p.End.Format(time.StampMilli))
			}
		}
		if len(ran) < 3 || skipped == 0 {
			t.Errorf("slow: %d runs and %d skipped ticks; want several of each", len(ran), skipped)
		}
		t.Logf("slow: %d runs, %d ticks skipped", len(ran), skipped)
	})
}
