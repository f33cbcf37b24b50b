package main

import (
	"fmt"
	"os"
	"testing"

	"github.com/shoal-run/shoal/gitsync"
)

// TestMain lets the test binary stand in for the shoal binary where an
// agent under test re-runs itself to evaluate a spec (evalCommand).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == evaluateCommand {
		if err := gitsync.ServeEvaluation(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
