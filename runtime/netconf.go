package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Network modes of a container.
const (
	// NetworkBridge gives a container its own network namespace on the
	// node's bridge: it listens on the port its image expects, and a host
	// port from the range is mapped to it for peers.
	NetworkBridge = "bridge"
	// NetworkHost joins the agent's network namespace: the process listens
	// on the host port handed to it in PORT. The exception, for software
	// that needs the host's network.
	NetworkHost = "host"
)

// ErrNoCNI means the CNI plugins are missing.
var ErrNoCNI = errors.New("runtime: CNI plugins missing")

// NetworkConfig says how containers are networked on this node.
type NetworkConfig struct {
	// Mode is the default for services that do not choose: NetworkBridge
	// (the default) or NetworkHost (no CNI at all: every container joins
	// the agent's namespace).
	Mode string
	// Bridge is the node-local bridge's name; default "shoal0".
	Bridge string
	// Subnet of the bridge; its first address is the gateway, where the
	// agent serves containers DNS. Default 10.89.0.0/16.
	Subnet string
	// BinDirs hold the CNI plugins; default /usr/lib/cni and /opt/cni/bin.
	BinDirs []string
	// ConfDir, when set, holds the operator's own network configuration
	// list (the first *.conflist by name) instead of the generated one.
	ConfDir string
	// DenyPorts are the agent's own ports (API, gossip, DNS): containers
	// can reach them at no address, on this node or another.
	DenyPorts []int
}

// withDefaults fills the zero fields.
func (c NetworkConfig) withDefaults() NetworkConfig {
	if c.Mode == "" {
		c.Mode = NetworkBridge
	}
	if c.Bridge == "" {
		c.Bridge = "shoal0"
	}
	if c.Subnet == "" {
		c.Subnet = "10.89.0.0/16"
	}
	if len(c.BinDirs) == 0 {
		c.BinDirs = []string{"/usr/lib/cni", "/opt/cni/bin"}
	}
	return c
}

// ParseSubnet checks a bridge subnet and returns it with its gateway, the
// first host address. IPv4 only, and at least a /30 so a container fits.
func ParseSubnet(s string) (netip.Prefix, netip.Addr, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("container subnet %q: want CIDR notation such as 10.89.0.0/16", s)
	}
	p = p.Masked()
	if !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 8 {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("container subnet %q: want an IPv4 prefix from /8 to /30", s)
	}
	if p.Addr().IsLoopback() || p.Addr().IsMulticast() || p.Addr().IsUnspecified() {
		return netip.Prefix{}, netip.Addr{}, fmt.Errorf("container subnet %q: not usable for containers; pick a private range such as 10.89.0.0/16", s)
	}
	return p, p.Addr().Next(), nil
}

// cniConfList is the network configuration the agent writes for itself: a
// bridge with host-local addresses (kept under dataDir, so they go with the
// agent's data). Host ports and NAT are the agent's own rules (network.go).
func cniConfList(bridge string, subnet netip.Prefix, ipamDir string) []byte {
	type obj = map[string]any
	list := obj{
		"cniVersion": "1.0.0",
		"name":       "shoal-" + bridge,
		"plugins": []obj{
			{
				// Outbound NAT is one rule for the subnet (masqRules), not the
				// plugin's chain per container, which its DEL leaves behind
				// once the container's namespace is gone.
				"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
				// Hairpin: a container may reach its own published port.
				"hairpinMode": true,
				"ipam": obj{
					"type":    "host-local",
					"ranges":  [][]obj{{{"subnet": subnet.String(), "gateway": subnet.Addr().Next().String()}}},
					"routes":  []obj{{"dst": "0.0.0.0/0"}},
					"dataDir": ipamDir,
				},
			},
		},
	}
	b, _ := json.MarshalIndent(list, "", "  ")
	return b
}

// portMapping is one host port → container port mapping.
type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// mappingsFor pairs each named host port with its container port, sorted
// by host port so the same container always gets the same rules.
func mappingsFor(host, target map[string]int) []portMapping {
	var out []portMapping
	for name, hp := range host {
		cp := target[name]
		if cp == 0 {
			cp = hp
		}
		out = append(out, portMapping{HostPort: hp, ContainerPort: cp, Protocol: "tcp"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].HostPort < out[j].HostPort })
	return out
}

// Chain names. iptables allows 28 characters; bridge names have 15 at most.
func inputChain(bridge string) string   { return "SHOAL-IN-" + bridge }
func forwardChain(bridge string) string { return "SHOAL-FWD-" + bridge }

// inputRules are the filter rules for what containers send to this node
// itself: replies, DNS on the gateway, and the balancer's service ports.
// Everything else — the agent's API, gossip, the DNS socket group, any
// other local service, the node's loopback — is refused.
func inputRules(gateway netip.Addr, servicePorts []int) [][]string {
	rules := [][]string{
		{"-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"-d", gateway.String(), "-p", "udp", "--dport", "53", "-j", "ACCEPT"},
		{"-d", gateway.String(), "-p", "tcp", "--dport", "53", "-j", "ACCEPT"},
	}
	ports := append([]int(nil), servicePorts...)
	sort.Ints(ports)
	ports = compactInts(ports)
	// multiport takes at most 15 ports per rule.
	for len(ports) > 0 {
		n := min(len(ports), 15)
		rules = append(rules, []string{"-p", "tcp", "-m", "multiport", "--dports", joinInts(ports[:n]), "-j", "ACCEPT"})
		ports = ports[n:]
	}
	return append(rules, []string{"-j", "REJECT"})
}

// forwardRules are the filter rules for traffic routed or bridged through
// the node to or from containers. A container reaches another only through
// a published host port (the connection was DNATed there), never directly,
// and reaches no agent port anywhere.
func forwardRules(bridge string, denyPorts []int) [][]string {
	rules := [][]string{{"-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"}}
	ports := append([]int(nil), denyPorts...)
	sort.Ints(ports)
	ports = compactInts(ports)
	if len(ports) > 0 {
		for _, proto := range []string{"tcp", "udp"} {
			rules = append(rules, []string{"-i", bridge, "-p", proto, "-m", "multiport", "--dports", joinInts(ports[:min(len(ports), 15)]), "-j", "REJECT"})
		}
	}
	return append(rules,
		[]string{"-o", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
		[]string{"-o", bridge, "-j", "REJECT"},
		[]string{"-i", bridge, "-j", "ACCEPT"},
	)
}

// masqRules are the nat POSTROUTING rules of a bridge: outbound NAT for
// what leaves the subnet by another interface (unless the operator's own
// configuration does it), and NAT for connections to a host port that
// come back onto the bridge, from a container (hairpin) or from the
// node's loopback, so their replies return the way they came.
func masqRules(bridge string, subnet netip.Prefix, outbound bool) [][]string {
	c := []string{"-m", "comment", "--comment", "shoal " + bridge, "-j", "MASQUERADE"}
	rules := [][]string{
		append([]string{"-o", bridge, "-m", "conntrack", "--ctstate", "DNAT", "-s", subnet.String()}, c...),
		append([]string{"-o", bridge, "-s", "127.0.0.0/8"}, c...),
	}
	if outbound {
		rules = append(rules, append([]string{"-s", subnet.String(), "!", "-o", bridge}, c...))
	}
	return rules
}

// dnatChain holds a bridge's host-port rules.
func dnatChain(bridge string) string { return "SHOAL-DNAT-" + bridge }

// dnatJump sends connections to any of the node's addresses through it.
func dnatJump(bridge string) []string {
	return []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", dnatChain(bridge)}
}

// dnatRule maps one host port to a container; the comment names the
// container, so its rules can be found again after an agent restart.
func dnatRule(id string, ip netip.Addr, m portMapping) []string {
	return []string{"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(m.HostPort),
		"-m", "comment", "--comment", "shoal:" + id,
		"-j", "DNAT", "--to-destination", netip.AddrPortFrom(ip, uint16(m.ContainerPort)).String()}
}

// parseDNATRule reads a rule as iptables lists it ("-A CHAIN ...") back
// into its container and its spec; ok is false for other lines.
func parseDNATRule(line string) (id string, spec []string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 3 || f[0] != "-A" {
		return "", nil, false
	}
	spec = f[2:]
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "--comment" {
			if id, ok := strings.CutPrefix(strings.Trim(spec[i+1], `"`), "shoal:"); ok {
				spec = append([]string(nil), spec...)
				spec[i+1] = "shoal:" + id
				return id, spec, true
			}
		}
	}
	return "", nil, false
}

func compactInts(s []int) []int {
	out := s[:0]
	for i, v := range s {
		if v > 0 && v < 65536 && (i == 0 || v != s[i-1]) {
			out = append(out, v)
		}
	}
	return out
}

func joinInts(s []int) string {
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = strconv.Itoa(v)
	}
	return strings.Join(parts, ",")
}
