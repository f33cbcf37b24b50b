//go:build race

package gitsync_test

// raceEnabled: the race detector maps terabytes of shadow memory, which a
// data rlimit on the evaluator child counts; tests lift the limit.
const raceEnabled = true
