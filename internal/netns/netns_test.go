package netns

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestFleet builds 3 nodes, checks the host reaches a listener inside one
// and a node reaches another, that Cut blocks and Heal restores, and that
// Close leaves nothing behind.
func TestFleet(t *testing.T) {
	f, err := NewFleet("shtst", 3, "10.213.7.0/24")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nodes := f.Nodes()
	if len(nodes) != 3 || nodes[0].Addr != "10.213.7.1" || f.HostAddr() != "10.213.7.254" {
		t.Fatalf("nodes %+v host %s", nodes, f.HostAddr())
	}
	// A TCP listener inside node 2 (the test binary, re-executed as a tiny
	// echo server), reached from the host and from node 1.
	self, _ := os.Executable()
	srv := f.Command(1, self, "-test.run=TestHelperEcho")
	srv.Env = append(os.Environ(), "NETNS_ECHO_ADDR="+nodes[1].Addr+":9999")
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.Contains(line, "listening") {
		t.Fatalf("echo server: %q", line)
	}
	dial := func() error {
		c, err := net.DialTimeout("tcp", nodes[1].Addr+":9999", 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("host → node 2: %v", err)
	}
	if out, err := f.Command(0, "bash", "-c", "exec 3<>/dev/tcp/"+nodes[1].Addr+"/9999").CombinedOutput(); err != nil {
		t.Fatalf("node 1 → node 2: %v %s", err, out)
	}
	if err := f.Cut(1); err != nil {
		t.Fatal(err)
	}
	if err := dial(); err == nil {
		t.Fatal("cut node still reachable")
	}
	if err := f.Heal(1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dial() != nil {
		if time.Now().After(deadline) {
			t.Fatal("healed node unreachable")
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv.Process.Kill()
	srv.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	links, _ := exec.Command("ip", "link").Output()
	if strings.Contains(string(out), "shtst") || strings.Contains(string(links), "shtst") {
		t.Errorf("left behind:\n%s\n%s", out, links)
	}
}

func TestHelperEcho(t *testing.T) {
	addr := os.Getenv("NETNS_ECHO_ADDR")
	if addr == "" {
		t.Skip("helper process only")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
		}
		c.Close()
	}
}

func TestBadArgs(t *testing.T) {
	if _, err := NewFleet("x", 3, "10.0.0.0/16"); err == nil {
		t.Error("a /16 was accepted")
	}
	if _, err := NewFleet("muchtoolongprefix", 1, "10.213.8.0/24"); err == nil {
		t.Error("a long prefix was accepted")
	}
}
