package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/shoal-run/shoal"
)

func init() {
	register(command{
		name:  "validate",
		usage: "check a spec tree against the schema: shoal validate [-o json] [DIR]",
		run:   runValidate,
	})
}

// validateResult is the -o json output of shoal validate.
type validateResult struct {
	Valid    bool               `json:"valid"`
	Services int                `json:"services"`
	Jobs     int                `json:"jobs"`
	Replicas int                `json:"replicas"`
	Hash     string             `json:"hash,omitempty"`
	Errors   []shoal.FieldError `json:"errors"`
}

func runValidate(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("validate", stderr)
	output := fs.String("o", "text", "output format: text or json")
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if *output != "text" && *output != "json" {
		return 1, fmt.Errorf("-o %q: want text or json", *output)
	}
	if fs.NArg() > 1 {
		return 1, fmt.Errorf("want at most one directory, got %d arguments", fs.NArg())
	}
	dir := "."
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	spec, err := shoal.LoadDir(dir)
	var verr *shoal.ValidationError
	if err != nil && !errors.As(err, &verr) {
		return 1, err
	}
	res := validateResult{Valid: err == nil, Errors: []shoal.FieldError{}}
	if verr != nil {
		res.Errors = verr.Errors
	} else {
		res.Services, res.Jobs, res.Replicas, res.Hash = len(spec.Services), len(spec.Jobs), spec.Replicas(), spec.Hash
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return 1, err
		}
	} else if verr != nil {
		for _, fe := range verr.Errors {
			fmt.Fprintln(stderr, fe.Error())
		}
		fmt.Fprintf(stderr, "%d error(s)\n", len(verr.Errors))
	} else {
		fmt.Fprintf(stdout, "ok: %d services, %d jobs, %d replicas, spec %s\n", res.Services, res.Jobs, res.Replicas, res.Hash[:12])
	}
	if !res.Valid {
		return 1, nil
	}
	return 0, nil
}
