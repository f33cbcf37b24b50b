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

// TestCutInboundAndRenumber: a one-way cut stops what a node receives from
// its peers but not from the host, and heals; a renumbered node answers
// at its new address only.
func TestCutInboundAndRenumber(t *testing.T) {
	f, err := NewFleet("shtsr", 2, "10.213.22.0/24")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	self, _ := os.Executable()
	srv := f.Command(1, self, "-test.run=TestHelperEcho")
	srv.Env = append(os.Environ(), "NETNS_ECHO_ADDR=0.0.0.0:9999")
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); !strings.Contains(line, "listening") {
		t.Fatalf("echo server: %q", line)
	}
	fromHost := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr+":9999", 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	}
	fromPeer := func() error {
		return f.Command(0, "timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/"+f.Nodes()[1].Addr+"/9999").Run()
	}
	if err := fromPeer(); err != nil {
		t.Fatalf("node 1 → node 2 before the cut: %v", err)
	}
	if err := f.CutInbound(1); err != nil {
		t.Fatal(err)
	}
	if fromPeer() == nil {
		t.Fatal("node 2 still receives from node 1 through a one-way cut")
	}
	if err := fromHost(f.Nodes()[1].Addr); err != nil {
		t.Fatalf("the host no longer reaches node 2: %v", err)
	}
	if err := f.HealInbound(1); err != nil {
		t.Fatal(err)
	}
	if err := fromPeer(); err != nil {
		t.Fatalf("node 1 → node 2 after the heal: %v", err)
	}
	if err := f.HealInbound(1); err != nil {
		t.Fatalf("a second heal: %v", err)
	}
	old := f.Nodes()[1].Addr
	addr, err := f.Renumber(1, 102)
	if err != nil || addr != "10.213.22.102" || f.Nodes()[1].Addr != addr {
		t.Fatalf("renumber: %q %v", addr, err)
	}
	if err := fromHost(addr); err != nil {
		t.Fatalf("host → new address: %v", err)
	}
	if fromHost(old) == nil {
		t.Fatal("the old address still answers")
	}
}
