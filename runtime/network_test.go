package runtime_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/internal/imagebuild"
)

// redisCmd sends one command to a redis at addr and reads one reply line.
func redisCmd(addr, cmd string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Programs not written for Shoal listen on their own fixed ports: two
// busybox httpd on 80 and a redis on 6379 run side by side on one node,
// each in its own network namespace, reached at their host ports and at
// their container addresses.
func TestOffTheShelfOnTheirPorts(t *testing.T) {
	rt, _ := newRuntime(t, "t-offshelf")
	httpdImg, err := imagebuild.BusyboxHTTPD("served by busybox\n")
	if err != nil {
		t.Fatal(err)
	}
	redisImg, err := imagebuild.Redis()
	if err != nil {
		t.Fatal(err)
	}
	httpd := shoal.Service{
		Name: "www", Image: reg.Push(t, "shoal/httpd:1", httpdImg), Replicas: 2,
		Resources: shoal.Resources{CPU: 0.2, Memory: 64 << 20},
		Ports:     []shoal.Port{{Name: "http", Port: 8080, Target: 80, Protocol: shoal.ProtocolHTTP}},
		Health:    &shoal.Health{HTTP: "/", Interval: shoal.Duration(time.Second), Timeout: shoal.Duration(time.Second), HealthyThreshold: 1, UnhealthyThreshold: 3},
		Restart:   shoal.RestartPolicy{Policy: shoal.RestartAlways, Backoff: shoal.Duration(200 * time.Millisecond), MaxBackoff: shoal.Duration(time.Second)},
		Update:    shoal.UpdateStrategy{MaxSurge: 1},
	}
	redis := shoal.Service{
		Name: "redis", Image: reg.Push(t, "shoal/redis:7", redisImg), Replicas: 1,
		Resources: shoal.Resources{CPU: 0.2, Memory: 128 << 20},
		Ports:     []shoal.Port{{Name: "main", Port: 6379}},
		Restart:   httpd.Restart, Update: httpd.Update,
	}
	rt.SetDesired("rev1", append(desired(httpd), desired(redis)...))
	waitFor(t, 60*time.Second, "3 healthy instances", healthy(rt, 3))
	ips := map[string]bool{}
	for _, in := range rt.Instances() {
		if in.IP == "" || ips[in.IP] {
			t.Fatalf("%v: no address of its own on the bridge: %q", in.Slot, in.IP)
		}
		ips[in.IP] = true
		switch in.Service {
		case "www":
			if in.Targets["http"] != 80 {
				t.Errorf("%v listens on %d, want 80", in.Slot, in.Targets["http"])
			}
			for _, addr := range []string{"127.0.0.1:" + strconv.Itoa(in.Ports["http"]), net.JoinHostPort(in.IP, "80")} {
				body, err := httpGet("http://" + addr + "/")
				if err != nil || body != "served by busybox\n" {
					t.Errorf("%v at %s: %q, %v", in.Slot, addr, body, err)
				}
			}
		case "redis":
			for _, addr := range []string{"127.0.0.1:" + strconv.Itoa(in.Ports["main"]), net.JoinHostPort(in.IP, "6379")} {
				if got, err := redisCmd(addr, "PING"); err != nil || got != "+PONG" {
					t.Errorf("redis at %s: PING = %q, %v", addr, got, err)
				}
			}
		}
	}
}

func httpGet(u string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&b)
	if resp.StatusCode != 200 {
		return b.String(), fmt.Errorf("status %d", resp.StatusCode)
	}
	return b.String(), err
}

// A container reaches the node only on the balancer's ports and DNS: not
// the agent's API or gossip ports, nor any other local service; and it
// reaches another container only through a published host port.
func TestContainersAreFencedOff(t *testing.T) {
	rt, _ := newRuntime(t, "t-fence")
	// Stand-ins for the balancer (allowed) and for the agent's API (not).
	lb, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	api, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	for _, ln := range []net.Listener{lb, api} {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hello\n"))
				c.Close()
			}
		}()
	}
	lbPort, apiPort := lb.Addr().(*net.TCPAddr).Port, api.Addr().(*net.TCPAddr).Port
	if err := rt.AllowServicePorts([]int{lbPort}); err != nil {
		t.Fatal(err)
	}
	rt.SetDesired("rev1", desired(web(2, nil)))
	waitFor(t, 30*time.Second, "2 healthy instances", healthy(rt, 2))
	ins := rt.Instances()
	a, b := ins[0], ins[1]
	gw := rt.Gateway().String()
	// dial asks container a to connect somewhere; ok is whether it could.
	dial := func(addr string) (string, bool) {
		u := fmt.Sprintf("http://%s/dial?addr=%s", net.JoinHostPort(a.IP, strconv.Itoa(a.Targets["http"])), url.QueryEscape(addr))
		body, err := httpGet(u)
		return body, err == nil
	}
	for _, c := range []struct {
		what, addr string
		want       bool
	}{
		{"the balancer's port on the gateway", net.JoinHostPort(gw, strconv.Itoa(lbPort)), true},
		{"another port of the node (the agent API)", net.JoinHostPort(gw, strconv.Itoa(apiPort)), false},
		{"another container directly", net.JoinHostPort(b.IP, strconv.Itoa(b.Targets["http"])), false},
		{"another container's published host port", net.JoinHostPort(gw, strconv.Itoa(b.Ports["http"])), true},
	} {
		body, ok := dial(c.addr)
		if ok != c.want {
			t.Errorf("%s (%s): reached %v, want %v (%q)", c.what, c.addr, ok, c.want, body)
		}
	}
}

// A service's security settings reach its process: a read-only root, a
// user of its own, capabilities dropped; and every container runs without
// NET_RAW.
func TestSecuritySettings(t *testing.T) {
	rt, _ := newRuntime(t, "t-security")
	plain := web(1, nil)
	locked := web(1, nil)
	locked.Name = "locked"
	locked.Security = &shoal.Security{ReadOnly: true, User: "4242:4343"}
	// A user other than root may not bind a port below 1024.
	locked.Ports = []shoal.Port{{Name: "http", Port: 80, Target: 8080, Protocol: shoal.ProtocolHTTP}}
	capped := web(1, nil)
	capped.Name = "capped"
	capped.Security = &shoal.Security{CapDrop: []string{"ALL"}, CapAdd: []string{"CAP_NET_BIND_SERVICE"}}
	rt.SetDesired("rev1", append(append(desired(plain), desired(locked)...), desired(capped)...))
	waitFor(t, 30*time.Second, "3 healthy", healthy(rt, 3))
	status := func(in shoal.Instance) map[string]string {
		body, err := httpGet(fmt.Sprintf("http://%s/status", net.JoinHostPort(in.IP, strconv.Itoa(in.Targets["http"]))))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, l := range strings.Split(body, "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				out[k] = strings.Join(strings.Fields(v), " ")
			}
		}
		return out
	}
	write := func(in shoal.Instance) int {
		resp, err := http.Post(fmt.Sprintf("http://%s/write?path=/written", net.JoinHostPort(in.IP, strconv.Itoa(in.Targets["http"]))), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const capNetRaw = 1 << 13
	const capNetBindService = 1 << 10
	for _, in := range rt.Instances() {
		st := status(in)
		eff, err := strconv.ParseUint(st["CapEff"], 16, 64)
		if err != nil {
			t.Fatalf("%s: CapEff %q", in.Service, st["CapEff"])
		}
		if eff&capNetRaw != 0 {
			t.Errorf("%s runs with NET_RAW (CapEff %x)", in.Service, eff)
		}
		if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
			t.Errorf("%s: NoNewPrivs %q, Seccomp %q; want 1 and 2 (filtering)", in.Service, st["NoNewPrivs"], st["Seccomp"])
		}
		switch in.Service {
		case "web":
			if code := write(in); code != 200 {
				t.Errorf("the default container could not write its root: %d", code)
			}
		case "locked":
			if code := write(in); code != http.StatusForbidden {
				t.Errorf("a read_only container wrote its root: %d", code)
			}
			if !strings.HasPrefix(st["Uid"], "4242 ") || !strings.HasPrefix(st["Gid"], "4343 ") {
				t.Errorf("user: Uid %q Gid %q, want 4242 and 4343", st["Uid"], st["Gid"])
			}
		case "capped":
			if eff != capNetBindService {
				t.Errorf("capabilities %x, want only NET_BIND_SERVICE (%x)", eff, capNetBindService)
			}
		}
	}
}
