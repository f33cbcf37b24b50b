package main

import (
	"context"
	"io"
	"os"

	"github.com/shoal-run/shoal/gitsync"
)

// evaluateCommand is the hidden subcommand the agent runs as a child
// process to evaluate a spec head with limits (gitsync.Config.EvalCommand).
const evaluateCommand = "__evaluate-spec"

func init() {
	register(command{
		name: evaluateCommand, // no usage: hidden from help
		run: func(_ context.Context, _ []string, stdout, _ io.Writer) (int, error) {
			if err := gitsync.ServeEvaluation(os.Stdin, stdout); err != nil {
				return 1, err
			}
			return 0, nil
		},
	})
}

// evalCommand is the command line of the evaluator child: this binary.
func evalCommand() []string {
	exe, err := os.Executable()
	if err != nil {
		return nil // evaluate in process rather than not at all
	}
	return []string{exe, evaluateCommand}
}
