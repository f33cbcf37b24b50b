package runtime

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/coreos/go-iptables/iptables"
)

// TestAttachDetachLeavesNothing attaches a process's own network namespace
// to a bridge with a host port, then detaches and removes the network: no
// address, rule or chain of it may be left.
func TestAttachDetachLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces, iptables)")
	}
	dir := t.TempDir()
	cfg := NetworkConfig{Bridge: "shnettest", Subnet: "10.92.7.0/24", DenyPorts: []int{7946}}
	n, err := newNetwork(context.Background(), cfg, dir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.remove() })
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ip, err := n.attach(context.Background(), "ctr-test", uint32(cmd.Process.Pid), []portMapping{{HostPort: 29123, ContainerPort: 80, Protocol: "tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix(cfg.Subnet).Contains(ip) || ip == n.gateway {
		t.Errorf("address %v outside %s or the gateway", ip, cfg.Subnet)
	}
	if !strings.Contains(natRules(t), "--dport 29123") || !strings.Contains(natRules(t), ip.String()+":80") {
		t.Errorf("no DNAT rule for host port 29123:\n%s", natRules(t))
	}
	if err := n.detach(context.Background(), "ctr-test"); err != nil {
		t.Fatal(err)
	}
	if r := natRules(t); strings.Contains(r, "29123") || strings.Contains(r, "ctr-test") {
		t.Errorf("rules left after detach:\n%s", r)
	}
	if err := n.remove(); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("iptables-save").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "shnettest") || strings.Contains(l, "ctr-test") {
			t.Errorf("left after remove: %s", l)
		}
	}
	if _, err := os.Stat("/sys/class/net/shnettest"); err == nil {
		t.Error("bridge left after remove")
	}
}

func natRules(t *testing.T) string {
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	chains, _ := ipt.ListChains("nat")
	for _, c := range chains {
		rules, _ := ipt.List("nat", c)
		b.WriteString(strings.Join(rules, "\n") + "\n")
	}
	return b.String()
}

// Bad network settings stop the agent at start, saying what to do.
func TestNetworkBadInputNamesTheFix(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		name string
		cfg  NetworkConfig
		want string
	}{
		{"no plugins", NetworkConfig{BinDirs: []string{t.TempDir()}}, "apt-get install containernetworking-plugins"},
		{"bad subnet", NetworkConfig{Subnet: "10.0.0.0/31"}, "from /8 to /30"},
		{"long bridge name", NetworkConfig{Bridge: "a-very-long-bridge-name"}, "at most 15 characters"},
		{"empty conf dir", NetworkConfig{ConfDir: t.TempDir()}, "no *.conflist"},
	} {
		_, err := newNetwork(context.Background(), c.cfg, t.TempDir(), quiet)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
	// A name taken by a link that is not a bridge (a veth) is refused.
	if err := exec.Command("ip", "link", "add", "shnotbr", "type", "veth", "peer", "name", "shnotbr-p").Run(); err != nil {
		t.Fatal(err)
	}
	defer exec.Command("ip", "link", "del", "shnotbr").Run()
	_, err := newNetwork(context.Background(), NetworkConfig{Bridge: "shnotbr", Subnet: "10.92.8.0/24"}, t.TempDir(), quiet)
	if err == nil || !strings.Contains(err.Error(), "is not a bridge") {
		t.Errorf("a dummy link as the bridge: %v", err)
	}
}
