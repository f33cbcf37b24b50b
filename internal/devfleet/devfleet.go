// Package devfleet runs a real Shoal fleet on one machine: one agent
// process per network namespace, one private containerd shared through
// per-node containerd namespaces, a registry holding the example images,
// and a Git repository of specs. shoal dev and the fleet tests use it.
package devfleet

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/internal/imagebuild"
	"github.com/shoal-run/shoal/internal/netns"
	"github.com/shoal-run/shoal/runtime"
)

// Config of a local fleet.
type Config struct {
	Nodes  int    // default 3
	Prefix string // namespace prefix, default "shoal"
	Subnet string // default 10.213.0.0/24
	Binary string // the shoal binary agents run
	Dir    string // working directory: repo, agent data, logs
	// Seed is a spec tree copied into the new repository. Image references
	// of the form registry.example.com/NAME:TAG are rewritten to the local
	// registry, which serves the test app under every such name.
	Seed fs.FS
	// AppDir is the source of the example image (a Go main package);
	// default the test app of this checkout, found from the source path.
	AppDir string
	// Labels returns node i's labels (0-based); default zone a/b/c and
	// tier=backend on the first two.
	Labels func(i int) map[string]string
	// CPU and Memory allocatable per node; default 2 cores, 4Gi.
	CPU    float64
	Memory shoal.Bytes
	// Poll interval of the agents; default 1s.
	Poll time.Duration
	// SignCommits signs every commit with a key made for the fleet and
	// starts the agents with --trusted-keys set to it; CommitUnsigned then
	// makes a commit they must refuse.
	SignCommits bool
	// Loopback runs every agent in the host's network namespace on its own
	// loopback address instead of in a namespace of its own; Start falls
	// back to it when namespaces cannot be made. No partitions then.
	Loopback bool
	// ExtraAgentArgs are added to every agent's command line.
	ExtraAgentArgs []string
	Logger         *slog.Logger
}

// Node is one agent of the fleet.
type Node struct {
	Name, Addr, API, DNS, Namespace string
	NSPath                          string
	dataDir, logPath                string
	cmd                             *exec.Cmd
	done                            chan struct{}
}

// Fleet is a running local fleet.
type Fleet struct {
	cfg      Config
	log      *slog.Logger
	net      network
	daemon   *runtime.Daemon
	registry *imagebuild.Registry
	// hostNetwork: the agents run their containers on the host's network
	// (no right to make namespaces, so none to make bridges).
	hostNetwork bool
	gitCmd      *exec.Cmd // shoal serve-repo
	gitDone     chan struct{}
	repo        *git.Repository
	image       v1.Image // the test app, pushed under every example name
	signer      *openpgp.Entity
	keyring     string // armored public key file of signer

	RepoDir       string // the spec repository (a normal Git work tree)
	RepoURL       string // where agents fetch it: Git smart HTTP
	Registry      string // host:port of the registry
	Token         string // API token of every agent
	WebhookSecret string
	GossipKey     string

	mu    sync.Mutex
	nodes []*Node
	join  []string // SetJoin's list, when set
}

// Start builds the fleet and starts every agent. On error everything made
// so far is removed.
func Start(ctx context.Context, cfg Config) (_ *Fleet, err error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "shoal"
	}
	if cfg.Subnet == "" {
		cfg.Subnet = "10.213.0.0/24"
	}
	if cfg.CPU == 0 {
		cfg.CPU = 2
	}
	if cfg.Memory == 0 {
		cfg.Memory = 4 << 30
	}
	if cfg.Poll == 0 {
		cfg.Poll = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Labels == nil {
		cfg.Labels = func(i int) map[string]string {
			l := map[string]string{"zone": string(rune('a' + i%3))}
			if i < 2 {
				l["tier"] = "backend"
			}
			return l
		}
	}
	f := &Fleet{cfg: cfg, log: cfg.Logger, Token: randomString(16), WebhookSecret: randomString(16)}
	key := make([]byte, 32)
	rand.Read(key)
	f.GossipKey = base64.StdEncoding.EncodeToString(key)
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}

	if cfg.Loopback {
		f.net, err = newLoopback(cfg.Nodes, cfg.Subnet)
	} else {
		f.log.Info("creating network namespaces", "nodes", cfg.Nodes, "subnet", cfg.Subnet)
		var nf *netns.Fleet
		if nf, err = netns.NewFleet(cfg.Prefix, cfg.Nodes, cfg.Subnet); err == nil {
			f.net = nf
		} else {
			// Without the right to make namespaces there is none to make
			// bridges either: containers share the host's network too.
			f.log.Warn("network namespaces unavailable; running the agents on loopback addresses, their containers on the host network", "err", err)
			f.net, err = newLoopback(cfg.Nodes, cfg.Subnet)
			f.hostNetwork = true
		}
	}
	if err != nil {
		return nil, err
	}
	f.log.Info("starting a private containerd")
	if f.daemon, err = runtime.StartDaemon(ctx, filepath.Join("/tmp", cfg.Prefix+"-containerd"), f.log); err != nil {
		return nil, err
	}
	f.log.Info("building the example image and starting a registry")
	if f.registry, err = imagebuild.Serve(net.JoinHostPort(f.net.HostAddr(), "0")); err != nil {
		return nil, err
	}
	f.Registry = f.registry.Host
	if cfg.AppDir == "" {
		cfg.AppDir = imagebuild.TestAppDir()
	}
	bin, err := imagebuild.Build(cfg.AppDir)
	if err != nil {
		return nil, err
	}
	img, err := imagebuild.Image(bin)
	if err != nil {
		return nil, err
	}
	if _, err := f.registry.Push("shoal/testapp:1", img); err != nil {
		return nil, err
	}

	if cfg.SignCommits {
		if err := f.makeSigner(); err != nil {
			return nil, err
		}
	}
	f.RepoDir = filepath.Join(cfg.Dir, "repo")
	f.image = img
	if err := f.initRepo(); err != nil {
		return nil, err
	}
	if err := f.serveRepo(); err != nil {
		return nil, err
	}
	for i, n := range f.net.Nodes() {
		f.nodes = append(f.nodes, &Node{
			Name: fmt.Sprintf("node-%d", i+1), Addr: n.Addr, NSPath: n.NSPath,
			API: net.JoinHostPort(n.Addr, "7900"), DNS: net.JoinHostPort(n.Addr, "8600"),
			Namespace: fmt.Sprintf("%s-node-%d", cfg.Prefix, i+1),
			dataDir:   filepath.Join(cfg.Dir, fmt.Sprintf("node-%d", i+1)),
			logPath:   filepath.Join(cfg.Dir, fmt.Sprintf("node-%d.log", i+1)),
		})
	}
	for i := range f.nodes {
		if err := f.StartAgent(i); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func randomString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// initRepo creates the spec repository with go-git, seeded from cfg.Seed
// with example image names pointed at the local registry.
func (f *Fleet) initRepo() error {
	repo, err := git.PlainInit(f.RepoDir, false)
	if err != nil {
		return fmt.Errorf("init repo: %w", err)
	}
	if err := repo.Storer.SetReference(plumbingHeadMain()); err != nil {
		return err
	}
	f.repo = repo
	files := map[string]string{}
	if f.cfg.Seed != nil {
		err := fs.WalkDir(f.cfg.Seed, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(f.cfg.Seed, p)
			if err != nil {
				return err
			}
			files[p] = f.rewriteImages(string(b))
			return nil
		})
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	_, err = f.Commit("Seed the fleet", files)
	return err
}

// serveRepo serves the spec repository over Git smart HTTP on the host
// side of the fleet network, where every namespace can reach it, with
// `shoal serve-repo` in a process of its own: the Git host is not part of
// whatever process starts the fleet (a test built with -race, say), as it
// would not be on a real fleet.
func (f *Fleet) serveRepo() error {
	logf, err := os.OpenFile(filepath.Join(f.cfg.Dir, "repo.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("serve repo: %w", err)
	}
	cmd := exec.Command(f.cfg.Binary, "serve-repo", "--addr", net.JoinHostPort(f.net.HostAddr(), "0"), f.RepoDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return fmt.Errorf("serve repo: %w", err)
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("serve repo: %w", err)
	}
	done := make(chan struct{})
	f.gitCmd, f.gitDone = cmd, done
	// Its first line says where it listens: "serving DIR at URL".
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		io.Copy(io.Discard, out)
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	select {
	case line, ok := <-first:
		i := strings.LastIndex(line, " at ")
		if !ok || i < 0 {
			return fmt.Errorf("serve repo: shoal serve-repo said %q (log: %s)", line, logf.Name())
		}
		f.RepoURL = line[i+len(" at "):]
	case <-time.After(30 * time.Second):
		return fmt.Errorf("serve repo: no address from shoal serve-repo in 30s (log: %s)", logf.Name())
	}
	f.log.Info("repository served", "url", f.RepoURL, "pid", cmd.Process.Pid)
	return nil
}

// rewriteImages points registry.example.com/NAME:TAG at the local
// registry, pushing under that name an image of real software where the
// name says which (redis, httpd: packed from this machine's Debian
// packages), and the test app otherwise.
func (f *Fleet) rewriteImages(text string) string {
	const example = "registry.example.com/"
	for {
		i := strings.Index(text, example)
		if i < 0 {
			return text
		}
		end := i + len(example)
		for end < len(text) && strings.IndexByte("\"' \n,]}", text[end]) < 0 {
			end++
		}
		repoTag := text[i+len(example) : end]
		if _, err := f.registry.Push(repoTag, f.imageFor(repoTag)); err != nil {
			f.log.Warn("push example image", "image", repoTag, "err", err)
		}
		text = text[:i] + f.Registry + "/" + repoTag + text[end:]
	}
}

// imageFor is the image pushed as repoTag.
func (f *Fleet) imageFor(repoTag string) v1.Image {
	name, _, _ := strings.Cut(repoTag, ":")
	var img v1.Image
	var err error
	switch path.Base(name) {
	case "redis":
		img, err = imagebuild.Redis()
	case "httpd":
		img, err = imagebuild.BusyboxHTTPD("<h1>Served by busybox httpd, on a Shoal fleet</h1>\n")
	default:
		return f.image
	}
	if err != nil {
		f.log.Warn("pack image; the test app stands in", "image", repoTag, "err", err)
		return f.image
	}
	return img
}

// makeSigner makes the fleet's OpenPGP commit key and writes its public
// half where --trusted-keys finds it.
func (f *Fleet) makeSigner() error {
	e, err := openpgp.NewEntity("Shoal Dev", "fleet", "dev@shoal.local", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	var buf bytes.Buffer
	w, err := armor.Encode(&buf, openpgp.PublicKeyType, nil)
	if err != nil {
		return err
	}
	if err := e.Serialize(w); err != nil {
		return err
	}
	w.Close()
	f.signer, f.keyring = e, filepath.Join(f.cfg.Dir, "trusted.asc")
	return os.WriteFile(f.keyring, buf.Bytes(), 0o644)
}

// Commit writes files (slash paths; empty content deletes) into the
// repository and commits them, signed when the fleet signs. It returns the
// commit hash.
// Push stores an image in the fleet's registry as repoTag and returns the
// reference agents pull it by.
func (f *Fleet) Push(repoTag string, img v1.Image) (string, error) {
	return f.registry.Push(repoTag, img)
}

func (f *Fleet) Commit(msg string, files map[string]string) (string, error) {
	return f.commit(msg, files, f.signer)
}

// CommitUnsigned commits without a signature, as an intruder or a
// misconfigured laptop would.
func (f *Fleet) CommitUnsigned(msg string, files map[string]string) (string, error) {
	return f.commit(msg, files, nil)
}

func (f *Fleet) commit(msg string, files map[string]string, key *openpgp.Entity) (string, error) {
	wt, err := f.repo.Worktree()
	if err != nil {
		return "", err
	}
	for p, content := range files {
		full := filepath.Join(f.RepoDir, filepath.FromSlash(p))
		if content == "" {
			os.Remove(full)
			wt.Remove(p)
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return "", err
		}
		if _, err := wt.Add(p); err != nil {
			return "", err
		}
	}
	h, err := wt.Commit(msg, &git.CommitOptions{AllowEmptyCommits: true, SignKey: key,
		Author: &object.Signature{Name: "Shoal Dev", Email: "dev@shoal.local", When: time.Now()}})
	if err != nil {
		return "", fmt.Errorf("commit: %w", err)
	}
	return h.String(), nil
}

// Nodes returns the fleet's nodes.
func (f *Fleet) Nodes() []Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Node, len(f.nodes))
	for i, n := range f.nodes {
		out[i] = *n
	}
	return out
}

// StartAgent starts node i's agent inside its namespace.
func (f *Fleet) StartAgent(i int) error {
	f.mu.Lock()
	n := f.nodes[i]
	f.mu.Unlock()
	if err := os.MkdirAll(n.dataDir, 0o755); err != nil {
		return err
	}
	labels := []string{}
	for k, v := range f.cfg.Labels(i) {
		labels = append(labels, k+"="+v)
	}
	args := []string{
		"agent", "--repo", f.RepoURL, "--poll", f.cfg.Poll.String(),
		"--data-dir", n.dataDir, "--node-name", n.Name, "--labels", strings.Join(labels, ","),
		"--cpu", strconv.FormatFloat(f.cfg.CPU, 'f', -1, 64), "--memory", f.cfg.Memory.String(),
		"--bind", net.JoinHostPort(n.Addr, "7946"), "--advertise", n.Addr,
		"--join", f.joinList(),
		"--gossip-key", f.GossipKey, "--containerd", f.daemon.Socket, "--namespace", n.Namespace,
		"--start-containerd=false", "--insecure-registry", f.Registry,
		"--api", n.API, "--api-token", f.Token, "--dns", n.DNS, "--ingress", n.Addr,
		"--webhook-secret", f.WebhookSecret, "--handoff-timeout", "10s", "--port-range", portRange(i),
	}
	if f.keyring != "" {
		args = append(args, "--trusted-keys", f.keyring)
	}
	if f.hostNetwork {
		args = append(args, "--network", "host")
	} else if f.loopback() {
		// One network namespace for every agent: each needs a bridge
		// and a subnet of its own.
		net := f.nodeNetwork(i)
		args = append(args, "--bridge", net.Bridge, "--container-subnet", net.Subnet)
	}
	args = append(args, f.cfg.ExtraAgentArgs...)
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := f.net.Command(i, f.cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	f.mu.Lock()
	n.cmd, n.done = cmd, done
	f.mu.Unlock()
	f.log.Info("agent started", "node", n.Name, "addr", n.Addr, "pid", cmd.Process.Pid, "log", n.logPath)
	return nil
}

// loopback reports whether the agents share the host's network namespace.
func (f *Fleet) loopback() bool {
	_, ok := f.net.(*loopback)
	return ok
}

// nodeNetwork is node i's container network when agents share a
// namespace: a bridge and a /24 of its own.
func (f *Fleet) nodeNetwork(i int) runtime.NetworkConfig {
	return runtime.NetworkConfig{Bridge: fmt.Sprintf("%s%d", f.cfg.Prefix, i+1), Subnet: fmt.Sprintf("10.89.%d.0/24", 100+i)}
}

// joinList is every node's gossip address: an agent that restarts rejoins
// through whichever peer answers (its own address is skipped).
func (f *Fleet) joinList() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.join != nil {
		return strings.Join(f.join, ",")
	}
	var addrs []string
	for _, n := range f.nodes {
		addrs = append(addrs, net.JoinHostPort(n.Addr, "7946"))
	}
	return strings.Join(addrs, ",")
}

// StopAgent stops node i's agent gracefully (SIGTERM): it leaves the
// gossip and keeps its containers.
func (f *Fleet) StopAgent(i int) { f.signal(i, syscall.SIGTERM) }

// KillAgent kills node i's agent with SIGKILL, as a crash would.
func (f *Fleet) KillAgent(i int) { f.signal(i, syscall.SIGKILL) }

func (f *Fleet) signal(i int, sig syscall.Signal) {
	f.mu.Lock()
	n := f.nodes[i]
	cmd, done := n.cmd, n.done
	f.mu.Unlock()
	if cmd == nil {
		return
	}
	// ip netns exec runs the agent as its own child: signal the group.
	syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	f.mu.Lock()
	n.cmd = nil
	f.mu.Unlock()
}

// KillContainers kills every container task of node i (SIGKILL), as a
// machine losing power would.
func (f *Fleet) KillContainers(ctx context.Context, i int) error {
	return f.eachTask(ctx, f.nodes[i].Namespace, func(ctx context.Context, c containerd.Container, t containerd.Task) error {
		return t.Kill(ctx, syscall.SIGKILL)
	})
}

// KillSlot kills the task of one slot on node i (SIGKILL), as a crash of
// the process would. It reports whether it found the task.
func (f *Fleet) KillSlot(ctx context.Context, i int, service string, slot int) (bool, error) {
	found := false
	err := f.eachTask(ctx, f.nodes[i].Namespace, func(ctx context.Context, c containerd.Container, t containerd.Task) error {
		labels, err := c.Labels(ctx)
		if err != nil || labels[runtime.LabelService] != service || labels[runtime.LabelSlot] != strconv.Itoa(slot) {
			return err
		}
		found = true
		return t.Kill(ctx, syscall.SIGKILL)
	})
	return found, err
}

// RemoveContainers stops and deletes every container of node i.
func (f *Fleet) RemoveContainers(ctx context.Context, i int) error {
	client, err := containerd.New(f.daemon.Socket)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, f.nodes[i].Namespace)
	cs, err := client.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		// DeleteContainer waits for the task to exit; a delete that
		// still fails is tried again a few times, or the container's
		// shim and snapshot would outlive the fleet.
		var err error
		for try := 0; try < 5; try++ {
			if err = runtime.DeleteContainer(ctx, c, 0); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove container %s of node %d: %w", c.ID(), i, err))
		}
	}
	return errors.Join(errs...)
}

// shimsOf lists the PIDs of containerd shims started for the daemon on
// socket: their command line names it as -address.
func shimsOf(socket string) []int {
	dirs, _ := os.ReadDir("/proc")
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !strings.Contains(filepath.Base(args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-address" && args[i+1] == socket {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func (f *Fleet) eachTask(ctx context.Context, ns string, fn func(context.Context, containerd.Container, containerd.Task) error) error {
	client, err := containerd.New(f.daemon.Socket)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, ns)
	cs, err := client.Containers(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, c := range cs {
		if t, err := c.Task(ctx, nil); err == nil {
			errs = append(errs, fn(ctx, c, t))
		}
	}
	return errors.Join(errs...)
}

// Cut and Heal partition node i from the others and back.
func (f *Fleet) Cut(i int) error  { return f.net.Cut(i) }
func (f *Fleet) Heal(i int) error { return f.net.Heal(i) }

// CutInbound cuts node i off in one direction only: it still sends to
// the others, and receives nothing from them. HealInbound ends it.
func (f *Fleet) CutInbound(i int) error  { return f.net.CutInbound(i) }
func (f *Fleet) HealInbound(i int) error { return f.net.HealInbound(i) }

// Renumber moves node i, whose agent must be stopped, to address .(last)
// of the fleet's subnet; its agent starts there next time (its API and
// DNS too). The other agents' --join lists still name the old address.
func (f *Fleet) Renumber(i int, last byte) error {
	addr, err := f.net.Renumber(i, last)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[i]
	n.Addr = addr
	n.API, n.DNS = net.JoinHostPort(addr, "7900"), net.JoinHostPort(addr, "8600")
	return nil
}

// SetJoin replaces the --join list agents start with from now on (by
// default every node's address), e.g. with seeds that are gone.
func (f *Fleet) SetJoin(addrs []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.join = append([]string(nil), addrs...)
}

// Webhook tells node i's agent about a push of commit, as a Git host would.
func (f *Fleet) Webhook(i int, commit string) error {
	body := []byte(fmt.Sprintf(`{"ref":"refs/heads/main","after":%q}`, commit))
	req, err := http.NewRequest(http.MethodPost, "http://"+f.nodes[i].API+"/v1/webhook", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", gitsync.SignWebhook(f.WebhookSecret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: %s", resp.Status)
	}
	return nil
}

// Close stops every agent, removes their containers, stops containerd and
// the registry, and removes the namespaces. The working directory stays.
func (f *Fleet) Close() error {
	var errs []error
	// All at once: one by one, each departure would make the others start
	// its slots just before they stop too.
	var wg sync.WaitGroup
	for i := range f.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); f.StopAgent(i) }()
	}
	wg.Wait()
	if f.daemon != nil {
		for i, n := range f.nodes {
			if err := f.RemoveContainers(context.Background(), i); err != nil {
				errs = append(errs, err)
			}
			// Namespaced nodes take their bridges and rules with them;
			// on loopback they are the host's, and go now.
			if f.loopback() && !f.hostNetwork {
				if err := runtime.CleanNetwork(context.Background(), f.nodeNetwork(i), filepath.Join(n.dataDir, "runtime")); err != nil {
					errs = append(errs, fmt.Errorf("network of node %d: %w", i+1, err))
				}
			}
		}
		sock := f.daemon.Socket
		f.daemon.Stop()
		// Shims outlive their daemon by design; one whose task was never
		// deleted would stay forever (seen once in e2e: an exited task of
		// a container no longer listed). Nothing of the fleet may remain.
		for _, pid := range shimsOf(sock) {
			f.log.Warn("removing a leftover containerd shim", "pid", pid, "socket", sock)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		dir := filepath.Join("/tmp", f.cfg.Prefix+"-containerd")
		exec.Command("umount", "-R", dir).Run()
		os.RemoveAll(dir)
	}
	if f.registry != nil {
		f.registry.Close()
	}
	if f.gitCmd != nil {
		f.gitCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-f.gitDone:
		case <-time.After(5 * time.Second):
			f.gitCmd.Process.Kill()
			<-f.gitDone
		}
	}
	if f.net != nil {
		if err := f.net.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// LogPath is node i's agent log.
func (f *Fleet) LogPath(i int) string { return f.nodes[i].logPath }

func plumbingHeadMain() *plumbing.Reference {
	return plumbing.NewSymbolicReference(plumbing.HEAD, plumbing.NewBranchReferenceName("main"))
}
