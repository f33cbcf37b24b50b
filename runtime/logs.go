package runtime

import (
	"context"
	"encoding/json"
	"io"
	"os"
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
