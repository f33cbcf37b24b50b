package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/shoal-run/shoal/internal/devfleet"
)

// TestDev starts `shoal dev` as a user would, waits until the example
// fleet is serving, interrupts it, and checks that nothing is left: no
// namespace, no agent, no containerd, no container.
func TestDev(t *testing.T) {
	bin := buildShoal(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "dev", "--nodes", "2", "--prefix", "shdev", "--subnet", "10.213.11.0/24",
		"--dir", filepath.Join(dir, "dev"), "--seed", "../examples/fleet", "--app", "../examples/images/testapp")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	var out lockedBuffer
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	tokenc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		tokenRe := regexp.MustCompile(`SHOAL_TOKEN=(\S+)`)
		for sc.Scan() {
			out.Write([]byte(sc.Text() + "\n"))
			if m := tokenRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case tokenc <- m[1]:
				default:
				}
			}
		}
		exited <- cmd.Wait()
	}()
	stopped := false
	defer func() {
		if !stopped {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}()
	var token string
	select {
	case token = <-tokenc:
	case <-time.After(90 * time.Second):
		t.Fatalf("shoal dev did not come up:\n%s", out.String())
	}

	// Every example service reaches desired = healthy.
	deadline := time.Now().Add(90 * time.Second)
	for {
		var fleet struct {
			Services []struct {
				Name             string
				Desired, Healthy int
			}
		}
		req, _ := http.NewRequest("GET", "http://10.213.11.1:7900/v1/fleet", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		ok := false
		if resp, err := http.DefaultClient.Do(req); err == nil {
			json.NewDecoder(resp.Body).Decode(&fleet)
			resp.Body.Close()
			ok = len(fleet.Services) == 4
			for _, s := range fleet.Services {
				ok = ok && s.Desired > 0 && s.Healthy == s.Desired
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("example fleet not healthy: %+v\n%s", fleet, out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Ctrl-C tears everything down.
	syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-exited:
		stopped = true
	case <-time.After(60 * time.Second):
		t.Fatalf("shoal dev did not stop:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "Done; nothing left running.") {
		t.Errorf("no teardown message:\n%s", out.String())
	}
	ns, _ := exec.Command("ip", "netns", "list").Output()
	links, _ := exec.Command("ip", "link").Output()
	ps, _ := exec.Command("ps", "-eo", "args").Output()
	if strings.Contains(string(ns), "shdev") || strings.Contains(string(links), "shdev") {
		t.Errorf("namespaces or links left:\n%s\n%s", ns, links)
	}
	for _, line := range strings.Split(string(ps), "\n") {
		if strings.Contains(line, "shdev") {
			t.Errorf("process left: %s", line)
		}
	}
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestLoopbackFleet runs a two-node fleet without network namespaces, the
// way shoal dev falls back where they cannot be made: each agent on its own
// 127.x address, sharing the host's port space.
func TestLoopbackFleet(t *testing.T) {
	f, err := devfleet.Start(context.Background(), devfleet.Config{
		Nodes: 2, Prefix: "shlo", Subnet: "10.213.12.0/24", Binary: buildShoal(t), Dir: t.TempDir(),
		Loopback: true, Poll: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			f.Close()
		}
	}()
	nodes := f.Nodes()
	if !strings.HasPrefix(nodes[0].Addr, "127.213.12.") || nodes[0].NSPath != "" {
		t.Fatalf("node 1 at %s (namespace %q): want a loopback address and no namespace", nodes[0].Addr, nodes[0].NSPath)
	}
	img := f.Registry + "/shoal/testapp:1"
	if _, err := f.Commit("web", map[string]string{"web.yaml": service("web", 2, 8080, img, "loopback")}); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range nodes {
		for {
			body := ""
			if resp, err := client.Get("http://" + n.Addr + ":8080/"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = strings.TrimSpace(string(b))
			}
			if body == "loopback" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("web never answered through %s's balancer at %s:8080", n.Name, n.Addr)
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Both replicas answer through the balancer before the slower one's
		// health record has reached every node, so wait for the records.
		for {
			m := new(dns.Msg)
			m.SetQuestion("web.service.shoal.", dns.TypeA)
			in, _, err := new(dns.Client).Exchange(m, n.DNS)
			if err == nil && len(in.Answer) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("DNS on %s never named both nodes: %v %v", n.Name, err, in)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := f.Cut(0); err == nil {
		t.Error("a loopback fleet claimed to cut a node off")
	}
	closed = true
	if err := f.Close(); err != nil {
		t.Errorf("teardown: %v", err)
	}
	ps, _ := exec.Command("ps", "-eo", "args").Output()
	for _, line := range strings.Split(string(ps), "\n") {
		if strings.Contains(line, "shlo-") {
			t.Errorf("process left: %s", line)
		}
	}
	// On loopback the agents' bridges and rules are the host's: all gone.
	links, _ := exec.Command("ip", "link").Output()
	if strings.Contains(string(links), "shlo") {
		t.Errorf("bridges left:\n%s", links)
	}
	rules, _ := exec.Command("iptables-save").Output()
	for _, line := range strings.Split(string(rules), "\n") {
		if strings.Contains(line, "shlo") || strings.Contains(line, "CNI-") {
			t.Errorf("rule left: %s", line)
		}
	}
}
