package runtime

import (
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/shoal-run/shoal"
)

// portAllocator hands out node-local host ports to containers. Ports
// belong to a container, not to a slot: during a make-before-break
// replacement a slot's old and new containers both listen. A port is taken
// only if nothing listens on it, so ports of other programs are skipped.
type portAllocator struct {
	low, high int
	mu        sync.Mutex
	byOwner   map[string]map[string]int // container ID → port name → host port
	used      map[int]string
	next      int
}

func newPortAllocator(low, high int) *portAllocator {
	return &portAllocator{low: low, high: high, next: low, byOwner: map[string]map[string]int{}, used: map[int]string{}}
}

// allocate gives each named port of a new container a host port.
func (a *portAllocator) allocate(owner string, ports []shoal.Port) (map[string]int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseLocked(owner)
	out := map[string]int{}
	a.byOwner[owner] = out
	for _, p := range ports {
		port, err := a.take(owner)
		if err != nil {
			a.releaseLocked(owner)
			return nil, err
		}
		out[p.Name] = port
	}
	return out, nil
}

func (a *portAllocator) take(owner string) (int, error) {
	n := a.high - a.low + 1
	for i := 0; i < n; i++ {
		port := a.low + (a.next-a.low+i)%n
		if _, taken := a.used[port]; taken || !free(port) {
			continue
		}
		a.used[port] = owner
		a.next = port + 1
		return port, nil
	}
	return 0, fmt.Errorf("no free host port in %d-%d", a.low, a.high)
}

// free reports whether nothing listens on the TCP port.
func free(port int) bool {
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// adopt records the ports of a container found running (after a restart
// of the agent), so they are not handed out again.
func (a *portAllocator) adopt(owner string, ports map[string]int) {
	if len(ports) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.byOwner[owner]; ok {
		return
	}
	a.byOwner[owner] = ports
	for _, p := range ports {
		a.used[p] = owner
	}
}

func (a *portAllocator) release(owner string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseLocked(owner)
}

func (a *portAllocator) releaseLocked(owner string) {
	for _, p := range a.byOwner[owner] {
		if a.used[p] == owner {
			delete(a.used, p)
		}
	}
	delete(a.byOwner, owner)
}
