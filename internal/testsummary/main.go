// Command testsummary reads `go test -json` on stdin and writes what a
// plain `go test` run prints — each package's ok or FAIL line, and the
// output of failed tests — then a list of the tests that skipped and why,
// so that a skip shows in CI's log. It exits non-zero when it reads a
// failure, so a pipeline fails even without pipefail.
//
//	go test -json ./... | go run ./internal/testsummary
package main

import (
	"fmt"
	"os"
)

func main() {
	s, err := summarize(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	s.writeSkips(os.Stdout)
	if s.failed {
		os.Exit(1)
	}
}
