//go:build !race

package gitsync_test

const raceEnabled = false
