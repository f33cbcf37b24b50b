// Package netns builds a small network of "hosts" on one machine: a
// namespace per node, all joined by a bridge that lives in a namespace of
// its own, plus one link from the root namespace so processes here (a
// registry, a test) reach the nodes. shoal dev and the fleet tests use it;
// everything it creates is named from a prefix and removed by Close.
package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Node is one namespace of the fleet.
type Node struct {
	Name   string // namespace name
	NSPath string // /var/run/netns/<name>
	Addr   string // its address on the fleet network
	link   string // root end of its veth, in the bridge namespace
}

// Fleet is a set of node namespaces on one bridge.
type Fleet struct {
	prefix string
	subnet string
	nodes  []Node
	host   string
	closed bool
}

// Available says whether namespaces can be made here, and what to do if not.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root: run as root, or use distinct loopback addresses")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("the ip command is missing: apt-get install iproute2")
	}
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewFleet creates n node namespaces named <prefix>-1 … <prefix>-n on the
// /24 subnet (e.g. "10.213.0.0/24"): node i gets .i, the root namespace
// gets .254. Leftovers of an earlier run with the same prefix are removed
// first. On error, everything made so far is removed.
func NewFleet(prefix string, n int, subnet string) (*Fleet, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	pfx, err := netip.ParsePrefix(subnet)
	if err != nil || pfx.Bits() != 24 || !pfx.Addr().Is4() || n < 1 || n > 250 {
		return nil, fmt.Errorf("netns: want an IPv4 /24 subnet and 1-250 nodes, got %q and %d", subnet, n)
	}
	if len(prefix) > 8 {
		return nil, fmt.Errorf("netns: prefix %q too long: interface names are limited to 15 bytes", prefix)
	}
	Cleanup(prefix)
	base := pfx.Masked().Addr().As4()
	addr := func(last byte) string { a := base; a[3] = last; return netip.AddrFrom4(a).String() }
	f := &Fleet{prefix: prefix, subnet: pfx.Masked().String(), host: addr(254)}
	br := prefix + "-br"
	steps := [][]string{
		{"netns", "add", br},
		{"-n", br, "link", "add", "br0", "type", "bridge"},
		{"-n", br, "link", "set", "br0", "up"},
		{"-n", br, "link", "set", "lo", "up"},
		// The root namespace's link to the fleet network.
		{"link", "add", prefix + "-h", "type", "veth", "peer", "name", "uplink", "netns", br},
		{"-n", br, "link", "set", "uplink", "master", "br0", "up"},
		{"addr", "add", f.host + "/24", "dev", prefix + "-h"},
		{"link", "set", prefix + "-h", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			f.Close()
			return nil, err
		}
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		node := Node{Name: name, NSPath: "/var/run/netns/" + name, Addr: addr(byte(i)), link: fmt.Sprintf("node%d", i)}
		for _, s := range [][]string{
			{"netns", "add", name},
			{"-n", br, "link", "add", node.link, "type", "veth", "peer", "name", "eth0", "netns", name},
			{"-n", br, "link", "set", node.link, "master", "br0", "up"},
			{"-n", name, "addr", "add", node.Addr + "/24", "dev", "eth0"},
			{"-n", name, "link", "set", "eth0", "up"},
			{"-n", name, "link", "set", "lo", "up"},
		} {
			if err := ip(s...); err != nil {
				f.nodes = append(f.nodes, node)
				f.Close()
				return nil, err
			}
		}
		f.nodes = append(f.nodes, node)
	}
	return f, nil
}

// Nodes returns the node namespaces in order.
func (f *Fleet) Nodes() []Node { return append([]Node(nil), f.nodes...) }

// HostAddr is the root namespace's address on the fleet network.
func (f *Fleet) HostAddr() string { return f.host }

// Cut takes node i's (0-based) link to the bridge down: a partition.
func (f *Fleet) Cut(i int) error {
	return ip("-n", f.prefix+"-br", "link", "set", f.nodes[i].link, "down")
}

// Heal brings node i's link back up.
func (f *Fleet) Heal(i int) error {
	return ip("-n", f.prefix+"-br", "link", "set", f.nodes[i].link, "up")
}

// cutChain is the iptables chain of a one-way cut, in a node's namespace.
const cutChain = "SHOAL-CUT"

// CutInbound drops every packet node i receives from the other nodes,
// while what it sends still goes out: a cut in one direction. The root
// namespace's address still passes, so a test can watch the node.
func (f *Fleet) CutInbound(i int) error {
	for _, args := range [][]string{
		{"-N", cutChain},
		{"-A", cutChain, "-s", f.host, "-j", "RETURN"},
		{"-A", cutChain, "-s", f.subnet, "-j", "DROP"},
		{"-I", "INPUT", "1", "-i", "eth0", "-j", cutChain},
		{"-I", "FORWARD", "1", "-i", "eth0", "-j", cutChain},
	} {
		if err := f.iptables(i, args...); err != nil {
			f.HealInbound(i)
			return err
		}
	}
	return nil
}

// HealInbound undoes CutInbound; it does nothing where there is no cut.
func (f *Fleet) HealInbound(i int) error {
	if f.iptables(i, "-n", "-L", cutChain) != nil {
		return nil
	}
	var errs []error
	for _, args := range [][]string{
		{"-D", "INPUT", "-i", "eth0", "-j", cutChain},
		{"-D", "FORWARD", "-i", "eth0", "-j", cutChain},
		{"-F", cutChain},
		{"-X", cutChain},
	} {
		errs = append(errs, f.iptables(i, args...))
	}
	return errors.Join(errs...)
}

func (f *Fleet) iptables(i int, args ...string) error {
	out, err := f.Command(i, "iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s in %s: %v: %s", strings.Join(args, " "), f.nodes[i].Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Renumber gives node i a new address on the fleet network, as a DHCP
// server might after a reboot: the old one is gone. It returns the new
// address, .(last) of the subnet.
func (f *Fleet) Renumber(i int, last byte) (string, error) {
	pfx := netip.MustParsePrefix(f.subnet)
	a := pfx.Addr().As4()
	a[3] = last
	addr := netip.AddrFrom4(a).String()
	ns := f.nodes[i].Name
	if err := ip("-n", ns, "addr", "flush", "dev", "eth0"); err != nil {
		return "", err
	}
	if err := ip("-n", ns, "addr", "add", addr+"/24", "dev", "eth0"); err != nil {
		return "", err
	}
	f.nodes[i].Addr = addr
	return addr, nil
}

// Command runs a program inside node i's namespace.
func (f *Fleet) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", f.nodes[i].Name, name}, args...)...)
}

// Close removes every namespace and link of the fleet. Safe to call twice.
func (f *Fleet) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	return Cleanup(f.prefix)
}

// Cleanup removes what a fleet with this prefix made, also after a crash.
func Cleanup(prefix string) error {
	var errs []error
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		if name == prefix+"-br" || strings.HasPrefix(name, prefix+"-") && isNum(strings.TrimPrefix(name, prefix+"-")) {
			if err := ip("netns", "delete", name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Deleting the bridge namespace removes the veths; the root end of the
	// host link goes with its peer, but delete it explicitly if left.
	// The kernel removes it asynchronously once the namespace is gone: a
	// delete that fails because it vanished meanwhile is no error.
	if exec.Command("ip", "link", "show", prefix+"-h").Run() == nil {
		if err := ip("link", "delete", prefix+"-h"); err != nil && exec.Command("ip", "link", "show", prefix+"-h").Run() == nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func isNum(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
