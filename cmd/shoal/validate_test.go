package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestValidateExamples(t *testing.T) {
	code, out, errOut := runCLI(t, "validate", "../../examples/fleet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !regexp.MustCompile(`^ok: 4 services, 1 jobs, 11 replicas, spec [0-9a-f]{12}\n$`).MatchString(out) {
		t.Errorf("summary = %q", out)
	}
}

// TestValidateErrors checks the promise of the Foundation issue: a typo, a
// wrong type, an out-of-range port, a bad cron string and a duplicate name
// each fail with file:line and field, all in one run.
func TestValidateErrors(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"typo.yaml": "name: a\nimage: x\nresources:\n  memroy: 1Gi\n",
		"type.yaml": "name: b\nimage: x\nreplicas: five\n",
		"port.json": `{"name": "c", "image": "x", "ports": [{"port": 0}]}`,
		"cron.yaml": "name: d\nimage: x\nschedule: '* * * *'\n",
		"dup1.yaml": "name: e\nimage: x\n",
		"sub/e.cue": "name: \"e\"\nimage: \"y\"\n",
		"notes.txt": "ignored",
	})
	code, out, errOut := runCLI(t, "validate", dir)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	for _, want := range []string{
		"typo.yaml:4:3: resources.memroy: unknown field",
		"type.yaml:3:11: replicas: conflicting values \"five\" and int",
		"port.json:1:48: ports[0].port: invalid value 0 (out of bound >=1)",
		"cron.yaml:3:1: schedule: invalid cron schedule \"* * * *\"",
		"sub/e.cue:1:1: name: duplicate name \"e\", first declared at " + filepath.Join(dir, "dup1.yaml") + ":1:1",
		"5 error(s)",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	code, out, _ = runCLI(t, "validate", "-o", "json", dir)
	var res validateResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res.Valid || len(res.Errors) != 5 {
		t.Fatalf("json: code=%d err=%v res=%+v", code, err, res)
	}
	for _, e := range res.Errors {
		if e.File == "" || e.Line == 0 || e.Path == "" {
			t.Errorf("incomplete error %+v", e)
		}
	}
}

func TestValidateBadInput(t *testing.T) {
	for _, args := range [][]string{
		{"validate", "/does/not/exist"},
		{"validate", "-o", "yaml", "."},
		{"validate", "a", "b"},
		{"validate", "--nope"},
	} {
		if code, _, errOut := runCLI(t, args...); code != 1 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut)
		}
	}
	if code, _, _ := runCLI(t, "no-such-command"); code != 1 {
		t.Errorf("unknown command: exit %d", code)
	}
	if code, out, _ := runCLI(t, "version"); code != 0 || !strings.HasPrefix(out, "shoal ") {
		t.Errorf("version: %d %q", code, out)
	}
}
