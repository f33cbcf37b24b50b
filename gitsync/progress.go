package gitsync

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// progressLog turns go-git's progress stream ("Counting objects:  50%
// (1/2)\r" ... "done.\n") into log lines: complete lines are logged, and
// in-place updates at most once per interval.
type progressLog struct {
	log      *slog.Logger
	msg      string
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	buf  []byte
	last time.Time
}

func newProgressLog(log *slog.Logger, msg string, now func() time.Time) *progressLog {
	return &progressLog{log: log, msg: msg, interval: time.Second, now: now}
}

func (p *progressLog) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexAny(p.buf, "\r\n")
		if i < 0 {
			break
		}
		line := strings.TrimSpace(string(p.buf[:i]))
		final := p.buf[i] == '\n'
		p.buf = p.buf[i+1:]
		if line == "" {
			continue
		}
		if t := p.now(); final || t.Sub(p.last) >= p.interval {
			p.last = t
			p.log.Info(p.msg, "progress", line)
		}
	}
	if len(p.buf) > 4096 { // a server that never ends a line
		p.log.Info(p.msg, "progress", strings.TrimSpace(string(p.buf)))
		p.buf = p.buf[:0]
	}
	return len(b), nil
}
