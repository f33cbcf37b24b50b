// Package node holds the agent's decisions as pure functions over explicit
// state: values in, values out, no I/O and no clock (the time is an input).
// cmd/shoal gathers the input, calls the step and applies the output.
//
// Cron (cron.go): which job runs this node starts, keeps and ends, and the
// run records it publishes so the fleet agrees that each tick runs once.
// Ticks (ticks.go) come from the schedule alone, on a fixed grid.
package node
