package devfleet

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"

	"github.com/shoal-run/shoal/internal/netns"
)

// network is where the fleet's agents live: one network namespace per
// node on a bridge, or, where namespaces cannot be made, one loopback
// address per node in the host's namespace.
type network interface {
	Nodes() []netns.Node
	HostAddr() string // where agents reach the registry and the repository
	Command(i int, name string, args ...string) *exec.Cmd
	Cut(i int) error
	Heal(i int) error
	CutInbound(i int) error
	HealInbound(i int) error
	Renumber(i int, last byte) (string, error)
	Close() error
}

// loopback gives node i the address 127.B.C.(i+1), B and C from the
// fleet's subnet, so fleets with different subnets do not collide. Agents
// share the host's network namespace; each gets its own container port
// range (see portRange).
type loopback struct{ nodes []netns.Node }

func newLoopback(n int, subnet string) (*loopback, error) {
	pfx, err := netip.ParsePrefix(subnet)
	if err != nil || !pfx.Addr().Is4() {
		return nil, fmt.Errorf("subnet %q: want an IPv4 /24 such as 10.213.0.0/24", subnet)
	}
	o := pfx.Addr().As4()
	l := &loopback{}
	for i := range n {
		l.nodes = append(l.nodes, netns.Node{Name: fmt.Sprintf("loopback-%d", i+1), Addr: fmt.Sprintf("127.%d.%d.%d", o[1], o[2], i+1)})
	}
	return l, nil
}

func (l *loopback) Nodes() []netns.Node { return append([]netns.Node(nil), l.nodes...) }
func (l *loopback) HostAddr() string    { return "127.0.0.1" }
func (l *loopback) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command(name, args...)
}

var errNoPartition = errors.New("partitions need network namespaces; this fleet runs on loopback addresses")

func (l *loopback) Cut(int) error  { return errNoPartition }
func (l *loopback) Heal(int) error { return errNoPartition }

func (l *loopback) CutInbound(int) error               { return errNoPartition }
func (l *loopback) HealInbound(int) error              { return errNoPartition }
func (l *loopback) Renumber(int, byte) (string, error) { return "", errNoPartition }
func (l *loopback) Close() error                       { return nil }

// portRange is node i's range of container host ports: distinct per node,
// which loopback fleets need (one port space) and namespaced ones do not
// mind.
func portRange(i int) string {
	lo := 20000 + 500*i
	return fmt.Sprintf("%d-%d", lo, lo+499)
}
