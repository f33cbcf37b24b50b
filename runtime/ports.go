package runtime

import (
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/shoal-run/shoal"
)

// portAllocator hands out node-local host ports to slots. A port is taken
// only if nothing listens on it, so ports of other programs are skipped.
type portAllocator struct {
	low, high int
	mu        sync.Mutex
	bySlot    map[shoal.Slot]map[string]int
	used      map[int]shoal.Slot
	next      int
}

func newPortAllocator(low, high int) *portAllocator {
	return &portAllocator{low: low, high: high, next: low, bySlot: map[shoal.Slot]map[string]int{}, used: map[int]shoal.Slot{}}
}

// allocate gives each named port of a slot a host port.
func (a *portAllocator) allocate(slot shoal.Slot, ports []shoal.Port) (map[string]int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if have, ok := a.bySlot[slot]; ok && len(have) == len(ports) {
		return have, nil
	}
	a.releaseLocked(slot)
	out := map[string]int{}
	for _, p := range ports {
		port, err := a.take(slot)
		if err != nil {
			a.releaseLocked(slot)
			return nil, err
		}
		out[p.Name] = port
	}
	a.bySlot[slot] = out
	return out, nil
}

func (a *portAllocator) take(slot shoal.Slot) (int, error) {
	n := a.high - a.low + 1
	for i := 0; i < n; i++ {
		port := a.low + (a.next-a.low+i)%n
		if _, taken := a.used[port]; taken || !free(port) {
			continue
		}
		a.used[port] = slot
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
func (a *portAllocator) adopt(slot shoal.Slot, ports map[string]int) {
	if len(ports) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.bySlot[slot]; ok {
		return
	}
	a.bySlot[slot] = ports
	for _, p := range ports {
		a.used[p] = slot
	}
}

func (a *portAllocator) release(slot shoal.Slot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseLocked(slot)
}

// releaseIf releases a slot's ports only if they are the ones the removed
// container had: a replacement may already hold new ones.
func (a *portAllocator) releaseIf(slot shoal.Slot, labelJSON string) {
	var ports map[string]int
	json.Unmarshal([]byte(labelJSON), &ports)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range ports {
		if a.used[p] == slot {
			delete(a.used, p)
		}
	}
	if have := a.bySlot[slot]; have != nil {
		same := true
		for k, v := range ports {
			same = same && have[k] == v
		}
		if same {
			delete(a.bySlot, slot)
		}
	}
}

func (a *portAllocator) releaseLocked(slot shoal.Slot) {
	for _, p := range a.bySlot[slot] {
		delete(a.used, p)
	}
	delete(a.bySlot, slot)
}
