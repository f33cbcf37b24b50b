package gitsync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/gitsync/gittest"
)

// The test binary doubles as the evaluator child and as an agent that
// dies on a revision, selected by environment variables.
func TestMain(m *testing.M) {
	switch os.Getenv("GITSYNC_TEST_ROLE") {
	case "evaluator":
		if err := gitsync.ServeEvaluation(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "dies-on-revision":
		diesOnRevision()
	}
	os.Exit(m.Run())
}

// diesOnRevision runs a syncer that exits, as an agent killed by what a
// revision made it do, when handed the commit in GITSYNC_TEST_DIE_ON.
func diesOnRevision() {
	die := os.Getenv("GITSYNC_TEST_DIE_ON")
	s, err := gitsync.New(gitsync.Config{
		URL: os.Getenv("GITSYNC_TEST_URL"), DataDir: os.Getenv("GITSYNC_TEST_DATA"), PollInterval: time.Hour,
		OnRevision: func(r *shoal.Revision) {
			if r.Commit == die {
				os.Exit(3)
			}
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s.Run(context.Background()) //nolint:errcheck // only the exit matters
	os.Exit(1)
}

// childEval is the Config that evaluates in a child process (this binary).
func childEval(cfg gitsync.Config) gitsync.Config {
	cfg.EvalCommand = []string{os.Args[0], "-test.run=^$"}
	cfg.EvalEnv = []string{"GITSYNC_TEST_ROLE=evaluator"}
	if raceEnabled {
		cfg.EvalMemory = 1 << 50
	}
	return cfg
}

// bombCUE is a 94-byte service whose env comes from a comprehension over
// 100,000 elements: in process it took a minute and 600 MB.
const bombCUE = "import \"list\"\nname: \"x\"\nimage: \"y\"\nenv: {for i in list.Range(0, 100000, 1) {\"V\\(i)\": \"\\(i)\"}}\n"

// doublingCUE doubles a string 40 times: a terabyte, from a few lines.
func doublingCUE() string {
	var b strings.Builder
	b.WriteString("name: \"x\"\nimage: \"y\"\n_s0: \"ab\"\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "_s%d: \"\\(_s%d)\\(_s%d)\"\n", i, i-1, i-1)
	}
	b.WriteString("env: {A: _s40}\n")
	return b.String()
}

// TestEvaluationBounded: a head whose evaluation exceeds its time or
// memory is refused without hurting this process, the last good revision
// stays in force, and after a restart the head is refused from disk,
// without being evaluated again.
func TestEvaluationBounded(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's shadow memory cannot run under the evaluator's memory limit")
	}
	for name, spec := range map[string]string{"comprehension": bombCUE, "doubling": doublingCUE()} {
		t.Run(name, func(t *testing.T) {
			r := gittest.New(t)
			c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
			data := t.TempDir()
			cfg := childEval(gitsync.Config{URL: r.URL(), DataDir: data, EvalTimeout: 3 * time.Second, EvalMemory: 256 << 20})
			h := start(t, cfg)
			h.expect(c1)

			c2 := r.Commit("bomb", map[string]string{"bomb.cue": spec})
			began := time.Now()
			h.s.Trigger()
			e := h.waitError(gitsync.ErrorEvaluate, c2)
			if took := time.Since(began); took > cfg.EvalTimeout+5*time.Second {
				t.Errorf("refused after %v, want within the %v timeout", took, cfg.EvalTimeout)
			}
			t.Logf("refused: %s", e.Message)
			if cur := h.s.Current(); cur == nil || cur.Commit != c1 {
				t.Fatalf("current %v, want %s", cur, c1)
			}
			h.noRevision()
			h.stop()

			// After a restart the head is refused from the record on disk.
			h2 := start(t, gitsync.Config{URL: r.URL(), DataDir: data}) // no child: evaluating here would hang
			h2.expect(c1)
			e2 := h2.waitError(gitsync.ErrorEvaluate, c2)
			if e2.Message != e.Message {
				t.Errorf("after restart: %q, want the remembered %q", e2.Message, e.Message)
			}
			h2.noRevision()
		})
	}
}

// TestChildEvaluationMatchesInProcess: a spec evaluated in the child comes
// back whole, declaration sources included, and errors keep their fields.
func TestChildEvaluationMatchesInProcess(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML, "web.yaml": webYAML})
	h := start(t, childEval(gitsync.Config{URL: r.URL()}))
	rev := h.expect(c1)
	want, err := shoal.LoadSpec(mapFS(map[string]string{"billing.yaml": billingYAML, "web.yaml": webYAML}), ".")
	if err != nil {
		t.Fatal(err)
	}
	if rev.Spec.Hash != want.Hash || rev.Spec.Service("web").Source != want.Service("web").Source {
		t.Errorf("child spec %+v, want %+v", rev.Spec, want)
	}
	c2 := r.Commit("bad", map[string]string{"web.yaml": badYAML})
	h.s.Trigger()
	e := h.waitError(gitsync.ErrorValidate, c2)
	if len(e.Fields) != 1 || e.Fields[0].File != "web.yaml" || e.Fields[0].Line != 3 || e.Fields[0].Path != "replicas" {
		t.Errorf("fields %+v", e.Fields)
	}
}

// TestHeadThatKilledTheAgentIsRefused: an agent that dies while applying a
// revision (here, exits inside OnRevision) must not find it saved as the
// last good one, which would crash-loop it: at the next start the previous
// revision is restored and the fatal head is refused.
func TestHeadThatKilledTheAgentIsRefused(t *testing.T) {
	r := gittest.New(t)
	c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML})
	data := t.TempDir()
	h := start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h.expect(c1)
	h.stop()

	c2 := r.Commit("fatal", map[string]string{"web.yaml": webYAML})
	out, err := runRole(t, "dies-on-revision", "GITSYNC_TEST_DIE_ON="+c2, "GITSYNC_TEST_URL="+r.URL(), "GITSYNC_TEST_DATA="+data)
	if code := exitCode(err); code != 3 {
		t.Fatalf("the agent did not die on %s: exit %d (%v)\n%s", c2[:12], code, err, out)
	}

	h2 := start(t, gitsync.Config{URL: r.URL(), DataDir: data})
	h2.expect(c1)
	h2.waitError(gitsync.ErrorEvaluate, c2)
	h2.noRevision()
	b, err := os.ReadFile(filepath.Join(data, "refused.json"))
	if err != nil {
		t.Fatal(err)
	}
	var refused struct{ Heads []struct{ Commit string } }
	if err := json.Unmarshal(b, &refused); err != nil || len(refused.Heads) != 1 || refused.Heads[0].Commit != c2 {
		t.Errorf("refused.json: %s (%v)", b, err)
	}

	// A new commit is tried as usual.
	c3 := r.Commit("fixed", map[string]string{"web.yaml": strings.ReplaceAll(webYAML, "replicas: 2", "replicas: 1")})
	h2.s.Trigger()
	h2.expect(c3)
}

// TestForcePushRefusedUnderPolicy: with trusted keys, an older signed
// commit force-pushed over a newer one is refused by default.
func TestForcePushRefusedUnderPolicy(t *testing.T) {
	key := gittest.NewSSHKey(t, "release@shoal.invalid")
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow=%v", allow), func(t *testing.T) {
			r := gittest.New(t)
			c1 := r.Commit("one", map[string]string{"billing.yaml": billingYAML}, gittest.SignedBy(key))
			h := start(t, gitsync.Config{URL: r.URL(), AllowedSigners: key.AllowedSigner(), AllowNonFastForward: allow})
			h.expect(c1)
			c2 := r.Commit("two", map[string]string{"web.yaml": webYAML}, gittest.SignedBy(key))
			h.s.Trigger()
			h.expect(c2)

			r.Reset(c1) // roll back to an older, validly signed commit
			h.s.Trigger()
			if allow {
				h.expect(c1)
				return
			}
			h.waitError(gitsync.ErrorHistory, c1)
			h.noRevision()
			if cur := h.s.Current(); cur.Commit != c2 {
				t.Fatalf("current %s, want %s", cur.Short(), c2)
			}
		})
	}
}
