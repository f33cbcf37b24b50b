package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/containerd"
)

// ErrNoContainerd means neither a running containerd nor the binary to
// start one was found.
var ErrNoContainerd = errors.New("runtime: containerd not found: install it with `apt-get install containerd runc` (Debian/Ubuntu) or point --containerd at a running daemon's socket")

// Daemon is a private containerd started by Shoal, the way k3s embeds one:
// its own config, root, state and socket under one directory.
type Daemon struct {
	Socket string
	cmd    *exec.Cmd
	done   chan struct{}
	log    *slog.Logger
}

// daemonConfig disables the CRI plugin, which Shoal does not use and which
// needs CNI setup, and keeps every path under dir.
const daemonConfig = `version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q
`

// StartDaemon starts containerd from PATH with everything under dir and
// waits until it answers. The socket path must stay under the 108-byte
// limit of Unix sockets, so keep dir short.
func StartDaemon(ctx context.Context, dir string, log *slog.Logger) (*Daemon, error) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		return nil, ErrNoContainerd
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, errors.New("runtime: runc not found: install it with `apt-get install runc`")
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return nil, fmt.Errorf("containerd dir: %w", err)
	}
	sock := filepath.Join(dir, "containerd.sock")
	if len(sock) > 100 {
		return nil, fmt.Errorf("containerd socket path %s is too long for a Unix socket: use a shorter data dir", sock)
	}
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf(daemonConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("containerd config: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("containerd log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C to the agent must not kill containerd
	// before the agent has decided what to do with its containers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	d := &Daemon{Socket: sock, cmd: cmd, done: make(chan struct{}), log: log}
	go func() { cmd.Wait(); close(d.done) }()
	log.Info("started private containerd", "pid", cmd.Process.Pid, "socket", sock, "log", logFile.Name())

	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := ping(ctx, sock); err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("containerd exited at start: see %s", logFile.Name())
		case <-ctx.Done():
			d.Stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, fmt.Errorf("containerd did not answer on %s within 30s: see %s", sock, logFile.Name())
		}
	}
}

// ping reports whether a containerd answers on the socket.
func ping(ctx context.Context, sock string) error {
	if _, err := os.Stat(sock); err != nil {
		return err
	}
	c, err := containerd.New(sock, containerd.WithTimeout(time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = c.Version(ctx)
	return err
}

// Stop terminates the daemon by its PID and waits for it. Containers it
// ran keep running under their shims and are adopted by the next daemon.
func (d *Daemon) Stop() {
	if d == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// Pid is the daemon's process ID.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }
