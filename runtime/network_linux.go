//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// network attaches containers to the node's bridge with CNI and keeps the
// filter rules that fence them off from the agent.
type network struct {
	cfg     NetworkConfig
	log     *slog.Logger
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	subnet  netip.Prefix
	gateway netip.Addr
	ipt     *iptables.IPTables

	mu      sync.Mutex
	allowed string // service ports in the input chain, as last written
}

// requiredPlugins are the CNI plugins the generated configuration uses.
var requiredPlugins = []string{"bridge", "host-local"}

// newNetwork checks the plugins, makes the bridge and the filter rules.
// Every failure names its fix: the agent stops at start rather than run
// containers it cannot reach.
func newNetwork(_ context.Context, cfg NetworkConfig, dataDir string, log *slog.Logger) (*network, error) {
	n, err := loadNetwork(cfg, dataDir, log)
	if err != nil {
		return nil, err
	}
	if err := n.makeBridge(); err != nil {
		return nil, err
	}
	// Containers on one bridge talk at layer 2; only with br_netfilter do
	// those frames meet the filter rules (and a reply to a connection made
	// through a host port get its addresses translated back).
	if err := enableBridgeFilter(); err != nil {
		return nil, err
	}
	if err := n.writeFilter(nil); err != nil {
		return nil, err
	}
	if err := n.setupNAT(); err != nil {
		return nil, err
	}
	return n, nil
}

// setupNAT makes the host-port chain and the masquerade rules: outbound
// NAT for what leaves the subnet, and for a connection to a host port
// that comes back onto the bridge (hairpin, and from the node's loopback)
// so that its replies return the way it came.
func (n *network) setupNAT() error {
	chain := dnatChain(n.cfg.Bridge)
	if ok, _ := n.ipt.ChainExists("nat", chain); !ok {
		if err := n.ipt.NewChain("nat", chain); err != nil {
			return fmt.Errorf("iptables chain %s: %w", chain, err)
		}
	}
	for _, from := range []string{"PREROUTING", "OUTPUT"} {
		if err := n.ipt.InsertUnique("nat", from, 1, dnatJump(n.cfg.Bridge)...); err != nil {
			return fmt.Errorf("iptables %s: %w", from, err)
		}
	}
	for _, r := range masqRules(n.cfg.Bridge, n.subnet, n.cfg.ConfDir == "") {
		if err := n.ipt.AppendUnique("nat", "POSTROUTING", r...); err != nil {
			return fmt.Errorf("iptables NAT: %w", err)
		}
	}
	// A host port reached from the node's own loopback is routed to the
	// bridge with its 127.x source until masqueraded.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+n.cfg.Bridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("host ports from loopback: %w", err)
	}
	return nil
}

// CleanNetwork releases every address and rule a node's container network
// holds under dataDir (a runtime's DataDir), then deletes its bridge and
// chains: for a fleet torn down with its containers removed directly.
func CleanNetwork(ctx context.Context, cfg NetworkConfig, dataDir string) error {
	n, err := loadNetwork(cfg, dataDir, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	n.collect(ctx, nil)
	return n.remove()
}

// loadNetwork reads the configuration and finds the plugins; it changes
// nothing on the node.
func loadNetwork(cfg NetworkConfig, dataDir string, log *slog.Logger) (*network, error) {
	cfg = cfg.withDefaults()
	subnet, gw, err := ParseSubnet(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	if len(cfg.Bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q: at most 15 characters", cfg.Bridge)
	}
	n := &network{cfg: cfg, log: log, subnet: subnet, gateway: gw}
	var listBytes []byte
	if cfg.ConfDir != "" {
		files, err := libcni.ConfFiles(cfg.ConfDir, []string{".conflist"})
		if err != nil || len(files) == 0 {
			return nil, fmt.Errorf("--cni-conf-dir %s: no *.conflist file there: %v", cfg.ConfDir, err)
		}
		sort.Strings(files)
		if listBytes, err = os.ReadFile(files[0]); err != nil {
			return nil, fmt.Errorf("--cni-conf-dir: %w", err)
		}
	} else {
		for _, p := range requiredPlugins {
			if _, err := findPlugin(cfg.BinDirs, p); err != nil {
				return nil, fmt.Errorf("CNI plugin %q not found in %s: install them (apt-get install containernetworking-plugins) or set --cni-bin-dir: %w", p, strings.Join(cfg.BinDirs, ":"), ErrNoCNI)
			}
		}
		listBytes = cniConfList(cfg.Bridge, subnet, filepath.Join(dataDir, "cni", "ipam"))
	}
	if n.list, err = libcni.ConfListFromBytes(listBytes); err != nil {
		return nil, fmt.Errorf("CNI network configuration: %w", err)
	}
	// An explicit Exec: libcni makes its default lazily, unsafely for
	// concurrent calls.
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	n.cni = libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, filepath.Join(dataDir, "cni", "cache"), exec)
	if n.ipt, err = iptables.New(); err != nil {
		return nil, fmt.Errorf("iptables: %w (apt-get install iptables)", err)
	}
	return n, nil
}

func findPlugin(dirs []string, name string) (string, error) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}

// makeBridge creates the bridge with the gateway address, so that the
// agent can serve DNS there before the first container starts; the bridge
// plugin then finds it ready.
func (n *network) makeBridge() error {
	link, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = n.cfg.Bridge
		br := &netlink.Bridge{LinkAttrs: la}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("make bridge %s: %w (the agent needs root or CAP_NET_ADMIN; or run with --network host)", n.cfg.Bridge, err)
		}
		if link, err = netlink.LinkByName(n.cfg.Bridge); err != nil {
			return fmt.Errorf("bridge %s: %w", n.cfg.Bridge, err)
		}
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("%s exists and is not a bridge: remove it or choose --bridge", n.cfg.Bridge)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.gateway.AsSlice(), Mask: net.CIDRMask(n.subnet.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %s on bridge %s: %w", n.subnet, n.cfg.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring bridge %s up: %w", n.cfg.Bridge, err)
	}
	// Containers' outbound traffic is routed through the node.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IP forwarding: %w", err)
	}
	return nil
}

func enableBridgeFilter() error {
	const path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if _, err := os.Stat(path); err != nil {
		// The module may just not be loaded yet.
		if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
			return fmt.Errorf("load br_netfilter: %v: %s (containers on the bridge could reach each other directly; load it with modprobe br_netfilter)", err, strings.TrimSpace(string(out)))
		}
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable bridge filtering: %w", err)
	}
	return nil
}

// writeFilter (re)writes the input and forward chains and their jumps.
// servicePorts are the ports the balancer serves, which containers may
// reach on the node.
func (n *network) writeFilter(servicePorts []int) error {
	in, fwd := inputChain(n.cfg.Bridge), forwardChain(n.cfg.Bridge)
	rules := inputRules(n.gateway, servicePorts)
	key := fmt.Sprint(rules)
	n.mu.Lock()
	defer n.mu.Unlock()
	if key == n.allowed {
		return nil
	}
	if err := n.fillChain(in, rules); err != nil {
		return err
	}
	if n.allowed == "" {
		if err := n.fillChain(fwd, forwardRules(n.cfg.Bridge, n.cfg.DenyPorts)); err != nil {
			return err
		}
		if err := n.ipt.InsertUnique("filter", "INPUT", 1, "-i", n.cfg.Bridge, "-j", in); err != nil {
			return fmt.Errorf("iptables INPUT: %w", err)
		}
		for _, dir := range []string{"-i", "-o"} {
			if err := n.ipt.InsertUnique("filter", "FORWARD", 1, dir, n.cfg.Bridge, "-j", fwd); err != nil {
				return fmt.Errorf("iptables FORWARD: %w", err)
			}
		}
	}
	n.allowed = key
	return nil
}

// fillChain replaces a chain's rules, the new ones ahead of the old before
// the old are deleted, so the chain is never open for a moment.
func (n *network) fillChain(chain string, rules [][]string) error {
	if ok, _ := n.ipt.ChainExists("filter", chain); !ok {
		if err := n.ipt.NewChain("filter", chain); err != nil {
			return fmt.Errorf("iptables chain %s: %w", chain, err)
		}
		for _, r := range rules {
			if err := n.ipt.Append("filter", chain, r...); err != nil {
				return fmt.Errorf("iptables %s %v: %w", chain, r, err)
			}
		}
		return nil
	}
	old, err := n.ipt.List("filter", chain)
	if err != nil {
		return fmt.Errorf("iptables list %s: %w", chain, err)
	}
	// The old rules, behind the new final REJECT, match nothing once the
	// new ones are in; they are deleted from the end.
	for i, r := range rules {
		if err := n.ipt.Insert("filter", chain, i+1, r...); err != nil {
			return fmt.Errorf("iptables %s %v: %w", chain, r, err)
		}
	}
	for i := len(old) - 1; i >= 1; i-- { // old[0] is the -N line
		if err := n.ipt.DeleteById("filter", chain, len(rules)+i); err != nil {
			return fmt.Errorf("iptables trim %s: %w", chain, err)
		}
	}
	return nil
}

// AllowServicePorts lets containers reach the balancer on these ports.
func (n *network) allowServicePorts(ports []int) error { return n.writeFilter(ports) }

func (n *network) runtimeConf(id, netns string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0"}
}

// attach puts the network namespace of a created task (its init process
// pid) on the bridge and maps its host ports; it returns the address.
func (n *network) attach(ctx context.Context, id string, pid uint32, maps []portMapping) (netip.Addr, error) {
	unlock := lockCNI(syscall.LOCK_SH)
	defer unlock()
	netns := fmt.Sprintf("/proc/%d/ns/net", pid)
	// A leftover attachment of the same container (an earlier task of a
	// restarted one) goes first: its address and rules are stale.
	if _, err := n.cni.GetNetworkListCachedResult(n.list, n.runtimeConf(id, "")); err == nil {
		n.del(ctx, id)
	}
	if err := loopbackUp(netns); err != nil {
		return netip.Addr{}, fmt.Errorf("loopback of %s: %w", id, err)
	}
	res, err := n.cni.AddNetworkList(ctx, n.list, n.runtimeConf(id, netns))
	if err != nil {
		n.cni.DelNetworkList(context.WithoutCancel(ctx), n.list, n.runtimeConf(id, netns))
		return netip.Addr{}, fmt.Errorf("attach %s to %s: %w", id, n.list.Name, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("attach %s: result: %w", id, err)
	}
	var ip netip.Addr
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	if !ip.IsValid() {
		n.del(context.WithoutCancel(ctx), id)
		return netip.Addr{}, fmt.Errorf("attach %s: no IPv4 address in the CNI result", id)
	}
	// Host ports are rules of the agent's own, one per port: the portmap
	// plugin takes a dozen iptables runs per container, serialized on
	// the xtables lock, which made starting a container three times slower.
	for _, m := range maps {
		if err := n.ipt.Append("nat", dnatChain(n.cfg.Bridge), dnatRule(id, ip, m)...); err != nil {
			n.del(context.WithoutCancel(ctx), id)
			return netip.Addr{}, fmt.Errorf("map host port %d of %s: %w", m.HostPort, id, err)
		}
	}
	return ip, nil
}

// detach releases a container's address and rules (CNI DEL). The
// namespace may be gone already (its process exited): DEL still works
// from the cached configuration.
func (n *network) detach(ctx context.Context, id string) error {
	unlock := lockCNI(syscall.LOCK_SH)
	defer unlock()
	return n.del(ctx, id)
}

// unmap removes a container's host-port rules, before it stops.
func (n *network) unmap(id string) error {
	unlock := lockCNI(syscall.LOCK_SH)
	defer unlock()
	return n.delDNAT(func(c string) bool { return c == id })
}

// del removes the container's host-port rules and runs CNI DEL with the
// cached configuration of the attachment.
func (n *network) del(ctx context.Context, id string) error {
	errs := []error{n.delDNAT(func(c string) bool { return c == id })}
	rc := n.runtimeConf(id, "")
	if _, cached, err := n.cni.GetNetworkListCachedConfig(n.list, rc); err == nil && cached != nil {
		rc = cached
		rc.NetNS = "" // the process, and so its /proc path, may be another's now
	}
	if err := n.cni.DelNetworkList(ctx, n.list, rc); err != nil {
		errs = append(errs, fmt.Errorf("detach %s: %w", id, err))
	}
	return errors.Join(errs...)
}

// delDNAT deletes the host-port rules of the containers gone says are
// gone. Rules are deleted by their text, not their number, which other
// containers' changes may shift meanwhile.
func (n *network) delDNAT(gone func(id string) bool) error {
	chain := dnatChain(n.cfg.Bridge)
	rules, err := n.ipt.List("nat", chain)
	if err != nil {
		return fmt.Errorf("iptables list %s: %w", chain, err)
	}
	var errs []error
	for _, r := range rules {
		id, spec, ok := parseDNATRule(r)
		if ok && gone(id) {
			if err := n.ipt.Delete("nat", chain, spec...); err != nil {
				errs = append(errs, fmt.Errorf("unmap %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// collect releases every attachment whose container is not in live: left
// by containers removed while the agent was down, or by a crash.
func (n *network) collect(ctx context.Context, live map[string]bool) {
	atts, err := n.cni.GetCachedAttachments("")
	if err != nil {
		return
	}
	for _, a := range atts {
		if a.Network != n.list.Name || live[a.ContainerID] {
			continue
		}
		if err := n.detach(ctx, a.ContainerID); err != nil {
			n.log.Warn("reclaim network of a gone container", "container", a.ContainerID, "err", err)
		} else {
			n.log.Info("reclaimed network of a gone container", "container", a.ContainerID)
		}
	}
	// Host-port rules of containers with no cached attachment left.
	if err := n.delDNAT(func(id string) bool { return !live[id] }); err != nil {
		n.log.Warn("reclaim host ports of gone containers", "err", err)
	}
}

// remove deletes the bridge and every rule of this network; for a node
// that is drained for good, and for tests.
func (n *network) remove() error {
	unlock := lockCNI(syscall.LOCK_EX)
	defer unlock()
	var errs []error
	in, fwd := inputChain(n.cfg.Bridge), forwardChain(n.cfg.Bridge)
	errs = append(errs, n.ipt.DeleteIfExists("filter", "INPUT", "-i", n.cfg.Bridge, "-j", in))
	for _, dir := range []string{"-i", "-o"} {
		errs = append(errs, n.ipt.DeleteIfExists("filter", "FORWARD", dir, n.cfg.Bridge, "-j", fwd))
	}
	for _, c := range []string{in, fwd} {
		if ok, _ := n.ipt.ChainExists("filter", c); ok {
			errs = append(errs, n.ipt.ClearAndDeleteChain("filter", c))
		}
	}
	for _, r := range masqRules(n.cfg.Bridge, n.subnet, true) {
		errs = append(errs, n.ipt.DeleteIfExists("nat", "POSTROUTING", r...))
	}
	for _, from := range []string{"PREROUTING", "OUTPUT"} {
		errs = append(errs, n.ipt.DeleteIfExists("nat", from, dnatJump(n.cfg.Bridge)...))
	}
	if ok, _ := n.ipt.ChainExists("nat", dnatChain(n.cfg.Bridge)); ok {
		errs = append(errs, n.ipt.ClearAndDeleteChain("nat", dnatChain(n.cfg.Bridge)))
	}
	n.mu.Lock()
	n.allowed = ""
	n.mu.Unlock()
	if link, err := netlink.LinkByName(n.cfg.Bridge); err == nil {
		errs = append(errs, netlink.LinkDel(link))
	}
	return errors.Join(errs...)
}

// lockCNI keeps a network's removal (exclusive) apart from the CNI calls
// of this machine's Shoal processes (shared): calls for different
// containers run side by side.
func lockCNI(how int) (unlock func()) {
	f, err := os.OpenFile("/run/shoal-cni.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return func() {}
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return func() {}
	}
	return func() { f.Close() } // closing releases the lock
}

// loopbackUp brings up lo in the namespace at path, as the loopback
// plugin would, through a netlink socket opened in that namespace: no
// plugin process, no thread switching namespaces.
func loopbackUp(path string) error {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}
