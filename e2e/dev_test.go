package e2e

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDev starts `shoal dev` as a user would, waits until the example
// fleet is serving, interrupts it, and checks that nothing is left: no
// namespace, no agent, no containerd, no container.
func TestDev(t *testing.T) {
	bin := buildShoal(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "dev", "--nodes", "2", "--prefix", "shdev", "--subnet", "10.213.11.0/24",
		"--dir", filepath.Join(dir, "dev"), "--seed", "../examples/fleet")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var out strings.Builder
	tokenc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		tokenRe := regexp.MustCompile(`SHOAL_TOKEN=(\S+)`)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if m := tokenRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case tokenc <- m[1]:
				default:
				}
			}
		}
		exited <- cmd.Wait()
	}()
	defer func() {
		if cmd.ProcessState == nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
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
