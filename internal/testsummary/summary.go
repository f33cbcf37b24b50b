package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// event is one line of test2json's output (go doc test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// skip is a test that skipped, with the lines it logged: its reason.
type skip struct {
	Package, Test string
	Reason        []string
}

type summary struct {
	skips  []skip
	failed bool
	fails  []string // the FAIL lines of packages, repeated at the end
}

// summarize copies what a plain `go test` prints from the events on r to
// w as they come, and collects the skipped tests. Lines that are not
// events are copied as they are.
func summarize(r io.Reader, w io.Writer) (*summary, error) {
	s := &summary{}
	held := map[[2]string][]string{} // a running test's output, until it ends
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			fmt.Fprintf(w, "%s\n", line)
			continue
		}
		key := [2]string{e.Package, e.Test}
		switch {
		case e.Action == "build-output":
			io.WriteString(w, e.Output)
		case e.Action == "output" && e.Test != "":
			if !strings.HasPrefix(e.Output, "=== ") {
				held[key] = append(held[key], e.Output)
			}
		case e.Action == "output":
			// A package's closing lines; a passing package's "PASS" is
			// not shown by a plain run.
			if e.Output != "PASS\n" {
				io.WriteString(w, e.Output)
			}
			if strings.HasPrefix(e.Output, "FAIL\t") {
				s.fails = append(s.fails, e.Output)
			}
		case e.Action == "fail" && e.Test != "":
			for _, o := range held[key] {
				io.WriteString(w, o)
			}
			delete(held, key)
		case e.Action == "skip" && e.Test != "":
			var reason []string
			for _, o := range held[key] {
				if !strings.HasPrefix(o, "--- SKIP") {
					reason = append(reason, strings.TrimSpace(o))
				}
			}
			s.skips = append(s.skips, skip{Package: e.Package, Test: e.Test, Reason: reason})
			delete(held, key)
		case e.Action == "pass" && e.Test != "":
			delete(held, key)
		}
		if e.Action == "fail" || e.Action == "build-fail" {
			s.failed = true
		}
	}
	sort.Slice(s.skips, func(i, j int) bool {
		if s.skips[i].Package != s.skips[j].Package {
			return s.skips[i].Package < s.skips[j].Package
		}
		return s.skips[i].Test < s.skips[j].Test
	})
	return s, sc.Err()
}

// writeSkips lists the skipped tests and their reasons, then repeats the
// FAIL lines of failed packages: a log's last lines still say what failed.
func (s *summary) writeSkips(w io.Writer) {
	if len(s.skips) == 0 {
		fmt.Fprintln(w, "skipped tests: none")
	} else {
		fmt.Fprintf(w, "skipped tests: %d\n", len(s.skips))
	}
	for _, k := range s.skips {
		reason := strings.Join(k.Reason, " / ")
		if reason == "" {
			reason = "(no reason given)"
		}
		fmt.Fprintf(w, "  SKIP %s %s: %s\n", k.Package, k.Test, reason)
	}
	for _, f := range s.fails {
		io.WriteString(w, f)
	}
}
