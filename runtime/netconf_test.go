package runtime

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/shoal-run/shoal"
)

func TestParseSubnet(t *testing.T) {
	for _, c := range []struct {
		in, gw string
		ok     bool
	}{
		{"10.89.0.0/16", "10.89.0.1", true},
		{"10.89.3.7/24", "10.89.3.1", true}, // host bits are masked
		{"192.168.50.0/30", "192.168.50.1", true},
		{"10.0.0.0/31", "", false},  // no room for a container
		{"fd00::/64", "", false},    // IPv4 only
		{"127.0.0.0/8", "", false},  // loopback
		{"10.89.0.0", "", false},    // not CIDR
		{"300.1.1.0/24", "", false}, // not an address
		{"0.0.0.0/8", "", false},    // unspecified
		{"224.0.0.0/8", "", false},  // multicast
		{"10.0.0.0/4", "", false},   // absurdly large
		{"172.16.0.0/12", "172.16.0.1", true},
	} {
		_, gw, err := ParseSubnet(c.in)
		if (err == nil) != c.ok {
			t.Errorf("ParseSubnet(%q): err %v, want ok=%v", c.in, err, c.ok)
			continue
		}
		if c.ok && gw.String() != c.gw {
			t.Errorf("ParseSubnet(%q): gateway %v, want %s", c.in, gw, c.gw)
		}
	}
}

func TestMappingsAndTargets(t *testing.T) {
	ports := []shoal.Port{{Name: "http", Port: 8080, Target: 80}, {Name: "admin", Port: 9000}}
	host := map[string]int{"http": 20001, "admin": 20000}
	bridged := targetPorts(NetworkBridge, ports, host)
	if want := map[string]int{"http": 80, "admin": 9000}; !reflect.DeepEqual(bridged, want) {
		t.Errorf("bridge targets %v, want %v", bridged, want)
	}
	if hosted := targetPorts(NetworkHost, ports, host); !reflect.DeepEqual(hosted, host) {
		t.Errorf("host targets %v, want the host ports %v", hosted, host)
	}
	got := mappingsFor(host, bridged)
	want := []portMapping{{HostPort: 20000, ContainerPort: 9000, Protocol: "tcp"}, {HostPort: 20001, ContainerPort: 80, Protocol: "tcp"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("mappings %v, want %v", got, want)
	}
}

func TestInputRules(t *testing.T) {
	gw := netip.MustParseAddr("10.89.0.1")
	var ports []int
	for p := 1000; p < 1020; p++ {
		ports = append(ports, p, p) // duplicates are dropped
	}
	rules := inputRules(gw, append(ports, 0, 70000)) // so are impossible ports
	var multiport []string
	for _, r := range rules {
		s := strings.Join(r, " ")
		if strings.Contains(s, "--dports") {
			multiport = append(multiport, r[len(r)-3])
		}
	}
	// 20 ports: two rules, multiport takes 15 at most.
	if len(multiport) != 2 || strings.Count(multiport[0], ",") != 14 || strings.Count(multiport[1], ",") != 4 {
		t.Errorf("port rules %q", multiport)
	}
	last := strings.Join(rules[len(rules)-1], " ")
	if last != "-j REJECT" {
		t.Errorf("last rule %q, want a REJECT of everything else", last)
	}
	if s := strings.Join(rules[1], " "); !strings.Contains(s, "-d 10.89.0.1") || !strings.Contains(s, "--dport 53") {
		t.Errorf("DNS rule %q", s)
	}
}

func TestForwardRules(t *testing.T) {
	rules := forwardRules("shoal0", []int{7946, 7900, 8600})
	var text []string
	for _, r := range rules {
		text = append(text, strings.Join(r, " "))
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{
		"-i shoal0 -p tcp -m multiport --dports 7900,7946,8600 -j REJECT",
		"-i shoal0 -p udp -m multiport --dports 7900,7946,8600 -j REJECT",
		"-o shoal0 -m conntrack --ctstate DNAT -j ACCEPT",
		"-o shoal0 -j REJECT",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("forward rules lack %q:\n%s", want, all)
		}
	}
	// Published ports are accepted before direct traffic is refused.
	if strings.Index(all, "DNAT -j ACCEPT") > strings.Index(all, "-o shoal0 -j REJECT") {
		t.Errorf("order:\n%s", all)
	}
}

func TestGeneratedConfList(t *testing.T) {
	b := cniConfList("shoal0", netip.MustParsePrefix("10.89.0.0/16"), "/var/lib/shoal/runtime/cni/ipam")
	var v struct {
		Name    string           `json:"name"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != "shoal-shoal0" || len(v.Plugins) != 1 || v.Plugins[0]["type"] != "bridge" || v.Plugins[0]["ipMasq"] != false {
		t.Fatalf("conflist %s", b)
	}
	ipam := v.Plugins[0]["ipam"].(map[string]any)
	if ipam["dataDir"] != "/var/lib/shoal/runtime/cni/ipam" || !strings.Contains(string(b), `"gateway": "10.89.0.1"`) {
		t.Errorf("ipam %v", ipam)
	}
}

func TestDNATRuleRoundTrip(t *testing.T) {
	ip := netip.MustParseAddr("10.89.0.7")
	spec := dnatRule("web-0-abc", ip, portMapping{HostPort: 20001, ContainerPort: 80})
	// As iptables -S prints it back.
	line := "-A SHOAL-DNAT-shoal0 " + strings.Join(spec, " ")
	line = strings.Replace(line, "shoal:web-0-abc", `"shoal:web-0-abc"`, 1)
	id, got, ok := parseDNATRule(line)
	if !ok || id != "web-0-abc" || !reflect.DeepEqual(got, spec) {
		t.Errorf("parse %q = %q %q %v, want %q", line, id, got, ok, spec)
	}
	for _, other := range []string{"-N SHOAL-DNAT-shoal0", "-A X -j ACCEPT", "-A X -m comment --comment other -j DNAT"} {
		if _, _, ok := parseDNATRule(other); ok {
			t.Errorf("%q read as a host-port rule", other)
		}
	}
	if !strings.Contains(strings.Join(spec, " "), "--to-destination 10.89.0.7:80") {
		t.Errorf("rule %q", spec)
	}
}
