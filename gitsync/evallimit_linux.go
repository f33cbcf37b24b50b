//go:build linux

package gitsync

import (
	"syscall"
	"time"
)

// limitProcess caps this process's data (its private writable memory: the
// Go heap, not the address space Go reserves, which RLIMIT_AS would
// count) and its CPU time.
func limitProcess(memory int64, cpu time.Duration) error {
	as := syscall.Rlimit{Cur: uint64(memory), Max: uint64(memory)}
	if err := syscall.Setrlimit(syscall.RLIMIT_DATA, &as); err != nil {
		return err
	}
	if cpu > 0 {
		secs := uint64(cpu/time.Second) + 1
		c := syscall.Rlimit{Cur: secs, Max: secs}
		if err := syscall.Setrlimit(syscall.RLIMIT_CPU, &c); err != nil {
			return err
		}
	}
	return nil
}
