package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shoal-run/shoal/internal/imagebuild"
)

const httpdPage = "served by busybox httpd"

// httpdService is busybox httpd, which listens on 80 in its own network
// namespace whatever the service port.
func httpdService(image string, replicas int, version string) string {
	return fmt.Sprintf(`name: www
image: %s
replicas: %d
resources: {cpu: 0.1, memory: 16Mi}
ports:
  - {name: http, port: 8081, target: 80, protocol: http}
health: {http: /, interval: 250ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 2}
update: {max_surge: 1, min_healthy_time: 300ms}
env: {VERSION: %q}
`, image, replicas, version)
}

func redisService(image string, replicas int) string {
	return fmt.Sprintf(`name: redis
image: %s
replicas: %d
resources: {cpu: 0.1, memory: 64Mi}
ports:
  - {name: main, port: 6379}
health: {tcp: true, interval: 250ms, timeout: 250ms}
`, image, replicas)
}

// redisCmd sends commands on one connection and reads until want.
func redisCmd(conn net.Conn, cmds, want string) (string, error) {
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte(cmds)); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	var got strings.Builder
	for !strings.Contains(got.String(), want) {
		line, err := r.ReadString('\n')
		got.WriteString(line)
		if err != nil {
			return got.String(), err
		}
	}
	return got.String(), nil
}

// TestOffTheShelfFleet runs programs not written for Shoal, packed from
// Debian's packages, on the five-node fleet: busybox httpd on its port 80
// and redis-server on 6379, six replicas each so that some node runs two
// side by side, reached through every node's balancer and, by name, from
// inside another container; a rolling update of the fixed-port service
// drops no request; containers cannot reach the agents' own ports; and
// with all traffic entering one node every replica gets its share.
func TestOffTheShelfFleet(t *testing.T) {
	h := startFleet(t, "shnet", "10.213.10.0/24")
	httpdImg, err := imagebuild.BusyboxHTTPD(httpdPage + "\n")
	if err != nil {
		t.Fatal(err)
	}
	redisImg, err := imagebuild.Redis()
	if err != nil {
		t.Fatal(err)
	}
	httpdRef, err := h.f.Push("debian/httpd:1.35", httpdImg)
	if err != nil {
		t.Fatal(err)
	}
	redisRef, err := h.f.Push("debian/redis:7.0", redisImg)
	if err != nil {
		t.Fatal(err)
	}
	commit := h.push("off-the-shelf", map[string]string{
		"www.yaml":    httpdService(httpdRef, 6, "1"),
		"redis.yaml":  redisService(redisRef, 6),
		"client.yaml": service("client", 1, 8090, h.image, ""),
		"fair.yaml":   service("fair", 4, 8070, h.image, ""),
	})
	h.waitFor(90*time.Second, "the plan to be running", func() bool { return h.converged(0, commit) })

	// Six replicas on five nodes: some node runs two of each on the same
	// container port, each in its own namespace.
	for _, svc := range []string{"www", "redis"} {
		perNode := map[string]int{}
		most := 0
		for _, r := range h.records(0) {
			if r.Service == svc && r.Healthy {
				perNode[r.Node]++
				most = max(most, perNode[r.Node])
			}
		}
		if most < 2 {
			t.Errorf("%s: no node runs two replicas side by side: %v", svc, perNode)
		}
	}

	t.Run("every-balancer", func(t *testing.T) {
		h.t = t
		for i := range h.nodes {
			h.waitFor(10*time.Second, fmt.Sprintf("httpd through node %d", i+1), func() bool {
				body, err := h.getPath(i, 8081, "/")
				return err == nil && body == httpdPage
			})
			conn, err := net.DialTimeout("tcp", net.JoinHostPort(h.nodes[i].Addr, "6379"), 3*time.Second)
			if err != nil {
				t.Fatalf("redis through node %d: %v", i+1, err)
			}
			got, err := redisCmd(conn, "PING\r\n", "PONG")
			conn.Close()
			if err != nil || !strings.Contains(got, "+PONG") {
				t.Errorf("redis PING through node %d: %q, %v", i+1, got, err)
			}
		}
	})

	// dial asks the client container to connect to addr and send text.
	dial := func(addr, send, until string) (string, error) {
		q := url.Values{"addr": {addr}, "send": {send}, "until": {until}}
		return h.getPath(0, 8090, "/dial?"+q.Encode())
	}

	t.Run("by-name-from-a-container", func(t *testing.T) {
		h.t = t
		h.waitFor(10*time.Second, "redis.shoal from the client container", func() bool {
			got, err := dial("redis.shoal:6379", `PING\r\n`, "PONG")
			return err == nil && strings.Contains(got, "+PONG")
		})
		// Each replica is its own redis: SET and GET go on one connection,
		// so one replica answers both.
		got, err := dial("redis.shoal:6379", `SET shoal fish\r\nGET shoal\r\n`, "fish")
		if err != nil || !strings.Contains(got, "+OK") || !strings.Contains(got, "fish") {
			t.Errorf("SET then GET through redis.shoal: %q, %v", got, err)
		}
		got, err = dial("www.shoal:8081", `GET / HTTP/1.0\r\n\r\n`, httpdPage)
		if err != nil || !strings.Contains(got, httpdPage) {
			t.Errorf("www.shoal:8081 from a container: %q, %v", got, err)
		}
	})

	t.Run("isolation", func(t *testing.T) {
		h.t = t
		var client string
		for _, r := range h.records(0) {
			if r.Service == "client" {
				client = r.Node
			}
		}
		// Outbound traffic leaves, NATed to the node's address: the
		// registry on the fleet network's host side answers.
		if got, err := dial(h.f.Registry, `GET /v2/ HTTP/1.0\r\n\r\n`, "HTTP/1."); err != nil || !strings.Contains(got, "HTTP/1.") {
			t.Errorf("the client container could not reach the registry outside its node: %q, %v", got, err)
		}
		for i, n := range h.nodes {
			for _, port := range []string{"7900", "7946", "8600"} {
				addr := net.JoinHostPort(n.Addr, port)
				if got, err := dial(addr, "", ""); err == nil {
					t.Errorf("the client container (on %s) reached node %d's agent port %s: %q", client, i+1, addr, got)
				}
			}
		}
	})

	t.Run("rolling-update", func(t *testing.T) {
		h.t = t
		l := startLoadFn(func() error {
			body, err := h.getPath(1, 8081, "/")
			if err == nil && body != httpdPage {
				err = fmt.Errorf("body %q", body)
			}
			return err
		})
		commit := h.push("www v2", map[string]string{"www.yaml": httpdService(httpdRef, 6, "2")})
		took := h.waitFor(120*time.Second, "www v2 everywhere", func() bool { return h.converged(0, commit, "www") })
		ok, failed := l.end()
		if failed > 0 || ok == 0 {
			t.Errorf("rolling update of a fixed-port service: %d of %d requests failed: %s", failed, ok+failed, l.firstErrors())
		}
		t.Logf("rolled 6 busybox httpd replicas in %v; %d requests, %d failed", took.Round(time.Millisecond), ok+failed, failed)
	})

	t.Run("even-load", func(t *testing.T) {
		h.t = t
		// All requests enter through node 1; replicas on other nodes get
		// their share too.
		count := map[string]int{}
		const n = 400
		for range n {
			body, err := h.getPath(0, 8070, "/")
			if err != nil {
				t.Fatalf("fair through node 1: %v", err)
			}
			count[body]++
		}
		if len(count) != 4 {
			t.Fatalf("answers from %d replicas, want 4: %v", len(count), count)
		}
		for who, c := range count {
			if c < n/4/2 {
				t.Errorf("%s got %d of %d requests, less than half its share: %v", who, c, n, count)
			}
		}
		t.Logf("400 requests through node 1: %v", count)
	})
}
