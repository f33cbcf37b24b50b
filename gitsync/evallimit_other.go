//go:build !linux

package gitsync

import "time"

// limitProcess has no rlimits to set here: the Go memory limit and the
// parent's deadline remain.
func limitProcess(int64, time.Duration) error { return nil }
