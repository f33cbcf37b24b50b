package main

import (
	"os"
	"strings"
	"testing"
)

// testdata/run.json is `go test -json` of a package with a passing, a
// skipped and a failing test (with a subtest), then of a package that
// does not build.
func TestSummarize(t *testing.T) {
	f, err := os.Open("testdata/run.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out strings.Builder
	s, err := summarize(f, &out)
	if err != nil {
		t.Fatal(err)
	}
	s.writeSkips(&out)
	want := `    a_test.go:5: boom
--- FAIL: TestFail/sub (0.00s)
--- FAIL: TestFail (0.00s)
FAIL
FAIL	tsdemo	0.045s
# tsdemo/broken [tsdemo/broken.test]
broken/b.go:2:12: undefined: x
FAIL	tsdemo/broken [build failed]
skipped tests: 1
  SKIP tsdemo TestSkip: a_test.go:4: before / a_test.go:4: no IPv6 loopback here
FAIL	tsdemo	0.045s
FAIL	tsdemo/broken [build failed]
`
	if got := out.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if !s.failed {
		t.Error("failures not seen")
	}
}

func TestSummarizePassing(t *testing.T) {
	in := `{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:3: noise\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Output":"PASS\n"}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}
not an event
{"Action":"pass","Package":"p"}
`
	var out strings.Builder
	s, err := summarize(strings.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	s.writeSkips(&out)
	if want := "ok  \tp\t0.1s\nnot an event\nskipped tests: none\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	if s.failed {
		t.Error("a passing run counted as failed")
	}
}
