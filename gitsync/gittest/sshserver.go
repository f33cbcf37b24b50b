package gittest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
)

// SSHServer serves the repositories under a directory over SSH on
// 127.0.0.1, running git-upload-pack for each fetch. Only the client key it
// was made with may log in.
type SSHServer struct {
	Addr string // host:port
	// KnownHosts is a known_hosts file naming the server's host key.
	KnownHosts string
	root       string
	l          net.Listener
	wg         sync.WaitGroup
}

// ServeSSH starts an SSH server for the repositories under root that
// accepts the public key of client.
func ServeSSH(t testing.TB, root string, client *SSHKey) *SSHServer {
	t.Helper()
	_, hostPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewSignerFromKey(hostPriv)
	if err != nil {
		t.Fatal(err)
	}
	allowed, _, _, _, err := ssh.ParseAuthorizedKey([]byte(client.Public))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), allowed.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key")
		},
	}
	cfg.AddHostKey(hostSigner)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &SSHServer{Addr: l.Addr().String(), root: root, l: l}
	host, port, _ := net.SplitHostPort(s.Addr)
	s.KnownHosts = filepath.Join(t.TempDir(), "known_hosts")
	line := fmt.Sprintf("[%s]:%s %s", host, port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostSigner.PublicKey()))))
	if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(c, cfg)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		s.wg.Wait()
	})
	return s
}

// URL of the repository at rel (e.g. "remote.git") under the server root.
func (s *SSHServer) URL(rel string) string {
	return "ssh://git@" + s.Addr + filepath.ToSlash(filepath.Join(s.root, rel))
}

func (s *SSHServer) serve(c net.Conn, cfg *ssh.ServerConfig) {
	defer c.Close()
	conn, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "session only") //nolint:errcheck // test server
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			return
		}
		s.session(ch, chReqs)
	}
}

func (s *SSHServer) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" || len(req.Payload) < 4 {
			req.Reply(false, nil) //nolint:errcheck // test server
			continue
		}
		n := binary.BigEndian.Uint32(req.Payload)
		cmdline := string(req.Payload[4 : 4+n])
		prog, arg, _ := strings.Cut(cmdline, " ")
		if prog != "git-upload-pack" {
			req.Reply(false, nil) //nolint:errcheck // test server
			continue
		}
		req.Reply(true, nil) //nolint:errcheck // test server
		cmd := exec.Command("git", "upload-pack", strings.Trim(arg, "'"))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
		status := uint32(0)
		if err := cmd.Run(); err != nil {
			status = 1
		}
		ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, status)) //nolint:errcheck // test server
		return
	}
}
