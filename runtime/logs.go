package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/namespaces"
)

func contextWithNamespace(ctx context.Context, ns string) context.Context {
	return namespaces.WithNamespace(ctx, ns)
}

func hostPort(labelJSON, name string) int { return portsOf(labelJSON)[name] }

func portsOf(labelJSON string) map[string]int {
	var ports map[string]int
	json.Unmarshal([]byte(labelJSON), &ports)
	return ports
}

// rotate moves a log past max bytes to path.1 before a task starts. The
// shim holds the file open while the task runs, so rotation happens at
// (re)start, which is when crash-looping output grows fastest.
func rotate(path string, max int64) {
	if st, err := os.Stat(path); err == nil && st.Size() > max {
		os.Rename(path, path+".1")
	}
}

// truncateLarge keeps the log of a running container under max bytes. The
// shim holds the file open in append mode, so the file cannot be renamed
// away; like logrotate's copytruncate, it copies the content to path.1 and
// truncates in place, and the shim's next write lands at the new end.
// Lines written between the copy and the truncation are lost.
func truncateLarge(path string, max int64) error {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= max {
		return nil
	}
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".rotating-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path+".1"); err != nil {
		return err
	}
	return os.Truncate(path, 0)
}

// follower reads a file and, at its end, waits for more until closed.
type follower struct {
	f      *os.File
	mu     sync.Mutex
	closed bool
}

func newFollower(f *os.File) *follower { return &follower{f: f} }

func (fl *follower) Read(p []byte) (int, error) {
	for {
		n, err := fl.f.Read(p)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		// Truncated by rotation: go on from the new start.
		if off, err := fl.f.Seek(0, io.SeekCurrent); err == nil {
			if st, err := fl.f.Stat(); err == nil && st.Size() < off {
				fl.f.Seek(0, io.SeekStart)
				continue
			}
		}
		fl.mu.Lock()
		closed := fl.closed
		fl.mu.Unlock()
		if closed {
			return 0, io.EOF
		}
		time.Sleep(200 * time.Millisecond) // poll for growth; inotify would be finer
	}
}

func (fl *follower) Close() error {
	fl.mu.Lock()
	fl.closed = true
	fl.mu.Unlock()
	return fl.f.Close()
}
