package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/runtime"
)

// Default addresses of an agent. The gossip port follows Serf's convention
// and DNS follows Consul's, so operators find them where they expect.
const (
	defaultGossipPort = 7946
	defaultDNSAddr    = "127.0.0.1:8600"
	defaultDataDir    = "/var/lib/shoal"
)

// agentConfig is everything `shoal agent` is told. Flags fill it; a config
// file (JSON, keys named like the flags) may set the same values first.
type agentConfig struct {
	// Specs from Git.
	Repo, Branch, Path   string
	Poll                 time.Duration
	GitUser, GitPassword string
	GitToken             string
	SSHKey, KnownHosts   string
	TrustedKeys          string // armored OpenPGP keyring file
	AllowedSigners       string // SSH allowed_signers file
	WebhookSecret        string
	RefuseForcePush      bool

	// This node.
	DataDir  string
	NodeName string
	Labels   map[string]string
	CPU      float64
	Memory   shoal.Bytes

	// Gossip.
	Bind           string // host:port
	Advertise      string // host (or host:port) peers reach us at
	Join           []string
	GossipKey      string // base64 Serf key; or GossipKeyFile, or Keyring
	GossipKeyFile  string
	Keyring        string
	InsecureGossip bool
	// Reconnection after partitions and outages (mesh/timers.go).
	ReconnectTimeout  time.Duration
	TombstoneTimeout  time.Duration
	RejoinMaxInterval time.Duration

	// Containers.
	ContainerdSocket    string
	ContainerdNamespace string
	StartContainerd     bool
	InsecureRegistries  []string
	DockerConfig        string
	PortRange           string
	DrainOnExit         bool
	// Container network: bridge (the default) or host, and the bridge's
	// settings.
	Network         string
	Bridge          string
	ContainerSubnet string
	CNIBinDirs      []string
	CNIConfDir      string

	// Serving.
	API            string
	APIToken       string
	APITokenFile   string
	DNS            string
	ContainerDNS   string
	ScaleDownDelay time.Duration
	DNSUpstreams   []string
	Ingress        string // host the balancer listens on for every service port
	HandoffTimeout time.Duration
	LogLevel       string
	// BalancerThreads is the balancer's event loops, each with a P of its
	// own added to GOMAXPROCS; 0 for one per CPU.
	BalancerThreads int
}

// listFlag is a repeatable, comma-separated flag.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.v = append(*l.v, p)
		}
	}
	return nil
}

// labelsFlag reads k=v,k=v.
type labelsFlag struct{ m *map[string]string }

func (l labelsFlag) String() string {
	if l.m == nil || *l.m == nil {
		return ""
	}
	var parts []string
	for k, v := range *l.m {
		parts = append(parts, k+"="+v)
	}
	sortStrings(parts)
	return strings.Join(parts, ",")
}

func (l labelsFlag) Set(s string) error {
	if *l.m == nil {
		*l.m = map[string]string{}
	}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want key=value", p)
		}
		(*l.m)[k] = v
	}
	return nil
}

type bytesFlag struct{ b *shoal.Bytes }

func (f bytesFlag) String() string {
	if f.b == nil {
		return ""
	}
	return f.b.String()
}

func (f bytesFlag) Set(s string) error {
	v, err := shoal.ParseBytes(s)
	if err != nil {
		return err
	}
	*f.b = v
	return nil
}

func (c *agentConfig) flags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.Repo, "repo", "", "URL of the spec repository (https://, ssh://, git@host:path, file:// or a path); required")
	fs.StringVar(&c.Branch, "branch", "main", "branch to follow")
	fs.StringVar(&c.Path, "path", "", "directory inside the repository that holds the specs (default: the whole tree)")
	fs.DurationVar(&c.Poll, "poll", 30*time.Second, "how often to check the remote head")
	fs.StringVar(&c.GitUser, "git-user", "", "HTTPS username")
	fs.StringVar(&c.GitPassword, "git-password", os.Getenv("SHOAL_GIT_PASSWORD"), "HTTPS password (or SHOAL_GIT_PASSWORD)")
	fs.StringVar(&c.GitToken, "git-token", os.Getenv("SHOAL_GIT_TOKEN"), "HTTPS token (or SHOAL_GIT_TOKEN)")
	fs.StringVar(&c.SSHKey, "ssh-key", "", "SSH private key file for ssh:// remotes")
	fs.StringVar(&c.KnownHosts, "known-hosts", "", "known_hosts file the SSH host key is checked against")
	fs.StringVar(&c.TrustedKeys, "trusted-keys", "", "armored OpenPGP keyring: deploy only commits signed by these keys")
	fs.StringVar(&c.AllowedSigners, "allowed-signers", "", "SSH allowed_signers file: deploy only commits signed by these keys")
	fs.StringVar(&c.WebhookSecret, "webhook-secret", os.Getenv("SHOAL_WEBHOOK_SECRET"), "HMAC secret of POST /v1/webhook (or SHOAL_WEBHOOK_SECRET)")
	fs.BoolVar(&c.RefuseForcePush, "refuse-force-push", false, "refuse heads that do not descend from the current revision")

	fs.StringVar(&c.DataDir, "data-dir", defaultDataDir, "state directory: clone, last good revision, logs")
	fs.StringVar(&c.NodeName, "node-name", host, "this node's name, unique in the fleet")
	fs.Var(labelsFlag{&c.Labels}, "labels", "node labels, k=v,k=v (repeatable)")
	fs.Float64Var(&c.CPU, "cpu", 0, "allocatable CPU cores (default: the machine's cores minus 0.5)")
	fs.Var(bytesFlag{&c.Memory}, "memory", "allocatable memory, e.g. 8Gi (default: the machine's memory minus 10%, at least 256Mi reserved)")

	fs.StringVar(&c.Bind, "bind", "0.0.0.0:"+strconv.Itoa(defaultGossipPort), "gossip bind address")
	fs.StringVar(&c.Advertise, "advertise", "", "address peers reach this node at (default: from --bind, or the first non-loopback address)")
	fs.Var(listFlag{&c.Join}, "join", "peers to join, host[:port],... (repeatable); retried in the background")
	fs.StringVar(&c.GossipKeyFile, "gossip-key-file", "", "file holding the base64 key that encrypts gossip (make one with `shoal keygen`)")
	fs.StringVar(&c.GossipKey, "gossip-key", os.Getenv("SHOAL_GOSSIP_KEY"), "the gossip key itself: prefer SHOAL_GOSSIP_KEY or --gossip-key-file, which ps does not show")
	fs.StringVar(&c.Keyring, "keyring", "", "Serf keyring file (a JSON list of base64 keys, primary first), instead of --gossip-key-file")
	fs.BoolVar(&c.InsecureGossip, "insecure-gossip", false, "allow unencrypted gossip on a non-loopback --bind: anyone who reaches the port can join the fleet")

	fs.DurationVar(&c.ReconnectTimeout, "reconnect-timeout", mesh.DefaultReconnectTimeout, "how long a failed member is remembered by gossip (its known address is still tried after that)")
	fs.DurationVar(&c.TombstoneTimeout, "tombstone-timeout", mesh.DefaultTombstoneTimeout, "how long a member that left is remembered as left")
	fs.DurationVar(&c.RejoinMaxInterval, "rejoin-max-interval", mesh.DefaultRejoinMaxInterval, "longest wait between attempts to reach the seeds and known members that are not alive")

	fs.StringVar(&c.ContainerdSocket, "containerd", "/run/containerd/containerd.sock", "containerd socket")
	fs.StringVar(&c.ContainerdNamespace, "namespace", "shoal", "containerd namespace of this agent's containers")
	fs.BoolVar(&c.StartContainerd, "start-containerd", true, "start a private containerd under --data-dir when none answers on the socket")
	fs.Var(listFlag{&c.InsecureRegistries}, "insecure-registry", "registry host[:port] to pull from over plain HTTP (repeatable)")
	fs.StringVar(&c.DockerConfig, "docker-config", "", "Docker config.json with registry credentials (default: ~/.docker/config.json)")
	fs.StringVar(&c.PortRange, "port-range", "20000-29999", "host ports handed to containers")
	fs.BoolVar(&c.DrainOnExit, "drain", false, "stop this node's containers on shutdown (default: keep them running)")
	fs.StringVar(&c.Network, "network", "bridge", "container networking: bridge (each container its own namespace on --bridge, set up with CNI) or host (every container on the node's network, listening on $PORT)")
	fs.StringVar(&c.Bridge, "bridge", "shoal0", "the node-local bridge containers are attached to")
	fs.StringVar(&c.ContainerSubnet, "container-subnet", "10.89.0.0/16", "the bridge's subnet; containers get addresses from it and reach the agent's DNS at its first address")
	fs.Var(listFlag{&c.CNIBinDirs}, "cni-bin-dir", "directories of the CNI plugins (default /usr/lib/cni,/opt/cni/bin)")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "", "directory whose first *.conflist replaces the generated network configuration (for operators who bring their own)")

	fs.StringVar(&c.API, "api", "127.0.0.1:7900", "HTTP API address")
	fs.StringVar(&c.APITokenFile, "api-token-file", "", "file holding the API bearer token (default: --data-dir/api-token, generated when missing)")
	fs.StringVar(&c.APIToken, "api-token", firstEnv("SHOAL_API_TOKEN", "SHOAL_TOKEN"), "the API token itself: prefer SHOAL_API_TOKEN or --api-token-file, which ps does not show")
	fs.StringVar(&c.DNS, "dns", defaultDNSAddr, "DNS server address for *.shoal")
	fs.StringVar(&c.ContainerDNS, "container-dns", "auto", "DNS address on port 53 that containers' resolv.conf names: auto (the bridge's gateway; the advertised address with --network host), an IP, or off")
	fs.Var(listFlag{&c.DNSUpstreams}, "dns-upstream", "resolvers for names outside .shoal (default: /etc/resolv.conf)")
	fs.StringVar(&c.Ingress, "ingress", "0.0.0.0", "address the balancer listens on, on every service port")
	fs.IntVar(&c.BalancerThreads, "balancer-threads", 0, fmt.Sprintf("the balancer's event loops, each keeping a thread while traffic flows; 0: one per CPU (%d here). Lower it where several agents share a machine", mesh.CPUs()))
	fs.DurationVar(&c.ScaleDownDelay, "scale-down-delay", time.Minute, "how long traffic must ask for fewer replicas before an autoscaled service shrinks")
	fs.DurationVar(&c.HandoffTimeout, "handoff-timeout", 30*time.Second, "how long a moved slot's old copy waits for the new one to be healthy")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
}

// applyConfigFile sets flags from a JSON object whose keys are flag names,
// before the command line is parsed, so the command line wins.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range m {
		if fs.Lookup(k) == nil {
			return fmt.Errorf("config file %s: unknown setting %q (keys are the agent's flag names)", path, k)
		}
		var vals []string
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				vals = append(vals, fmt.Sprint(e))
			}
		case map[string]any:
			var parts []string
			for lk, lv := range x {
				parts = append(parts, fmt.Sprintf("%s=%v", lk, lv))
			}
			vals = []string{strings.Join(parts, ",")}
		default:
			vals = []string{fmt.Sprint(x)}
		}
		for _, s := range vals {
			if err := fs.Set(k, s); err != nil {
				return fmt.Errorf("config file %s: %s: %w", path, k, err)
			}
		}
	}
	return nil
}

// finish fills machine-derived defaults and checks the whole config, so a
// bad flag fails at start with a message that says what to do.
func (c *agentConfig) finish() error {
	var errs []error
	if c.BalancerThreads < 0 {
		errs = append(errs, fmt.Errorf("--balancer-threads %d: want 1 or more, or 0 for one per CPU (%d here)", c.BalancerThreads, mesh.CPUs()))
	} else if c.BalancerThreads == 0 {
		c.BalancerThreads = mesh.CPUs()
	}
	if c.Repo == "" {
		errs = append(errs, errors.New("--repo is required: the URL or path of the spec repository"))
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required (the hostname was empty)"))
	}
	if c.CPU == 0 {
		c.CPU = max(float64(goruntime.NumCPU())-0.5, 0.5)
	}
	if c.Memory == 0 {
		if total := memTotal(); total > 0 {
			reserve := max(total/10, 256<<20)
			c.Memory = max(total-reserve, 128<<20)
		} else {
			errs = append(errs, errors.New("cannot read /proc/meminfo: set --memory"))
		}
	}
	if c.CPU < 0 || c.Memory < 0 {
		errs = append(errs, errors.New("--cpu and --memory must not be negative"))
	}
	for _, a := range []struct{ flag, v string }{{"--bind", c.Bind}, {"--api", c.API}, {"--dns", c.DNS}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port", a.flag, a.v))
		}
	}
	if err := c.readSecrets(); err != nil {
		errs = append(errs, err)
	}
	if err := c.checkGossipKey(); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := parsePortRange(c.PortRange); err != nil {
		errs = append(errs, err)
	}
	if c.GossipKey != "" && c.Keyring != "" {
		errs = append(errs, errors.New("set --gossip-key-file (or --gossip-key) or --keyring, not both"))
	}
	// A config built in code (tests) may leave these empty: the defaults.
	if c.Network == "" {
		c.Network = runtime.NetworkBridge
	}
	if c.Bridge == "" {
		c.Bridge = "shoal0"
	}
	if c.ContainerSubnet == "" {
		c.ContainerSubnet = "10.89.0.0/16"
	}
	switch c.Network {
	case runtime.NetworkBridge:
		if _, _, err := runtime.ParseSubnet(c.ContainerSubnet); err != nil {
			errs = append(errs, fmt.Errorf("--container-subnet: %w", err))
		}
		if c.Bridge == "" || len(c.Bridge) > 15 || strings.ContainsAny(c.Bridge, " /") {
			errs = append(errs, fmt.Errorf("--bridge %q: want an interface name of 1 to 15 characters", c.Bridge))
		}
	case runtime.NetworkHost:
	default:
		errs = append(errs, fmt.Errorf("--network %q: want bridge or host", c.Network))
	}
	if c.ReconnectTimeout < 0 || c.TombstoneTimeout < 0 || c.RejoinMaxInterval < 0 {
		errs = append(errs, errors.New("--reconnect-timeout, --tombstone-timeout and --rejoin-max-interval must not be negative"))
	}
	if c.HandoffTimeout <= 0 {
		errs = append(errs, errors.New("--handoff-timeout must be positive"))
	}
	return errors.Join(errs...)
}

// firstEnv is the first of the environment variables that is set.
func firstEnv(names ...string) string {
	for _, n := range names {
		if v := os.Getenv(n); v != "" {
			return v
		}
	}
	return ""
}

// readSecretFile reads a secret kept in a file, trimmed.
func readSecretFile(flag, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s %s: the file is empty", flag, path)
	}
	return v, nil
}

// readSecrets fills the gossip key and API token from their files.
func (c *agentConfig) readSecrets() error {
	var errs []error
	if c.GossipKeyFile != "" {
		v, err := readSecretFile("--gossip-key-file", c.GossipKeyFile)
		errs = append(errs, err)
		c.GossipKey = v
	}
	if c.APITokenFile != "" {
		v, err := readSecretFile("--api-token-file", c.APITokenFile)
		errs = append(errs, err)
		c.APIToken = v
	}
	return errors.Join(errs...)
}

// gossipKeyringFile is where the agent keeps its gossip keyring, rewritten
// by every rotation.
func (c *agentConfig) gossipKeyringFile() string {
	return filepath.Join(c.DataDir, "gossip-keyring.json")
}

// checkGossipKey refuses clear gossip beyond loopback, unless the
// operator asked for it.
func (c *agentConfig) checkGossipKey() error {
	if c.GossipKey != "" || c.Keyring != "" || c.InsecureGossip {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Bind)
	if err != nil || mesh.IsLoopbackHost(host) {
		return nil
	}
	if _, err := os.Stat(c.gossipKeyringFile()); err == nil {
		return nil // the keyring of an earlier run
	}
	return fmt.Errorf("--bind %s would gossip beyond this machine unencrypted: make a key with `shoal keygen > /etc/shoal/gossip.key` and pass --gossip-key-file /etc/shoal/gossip.key (or set SHOAL_GOSSIP_KEY) on every node, or say --insecure-gossip", c.Bind)
}

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || lo < 1024 || hi > 65535 || lo > hi {
		return 0, 0, fmt.Errorf("--port-range %q: want LOW-HIGH within 1024-65535", s)
	}
	return lo, hi, nil
}

// memTotal reads the machine's memory from /proc/meminfo, 0 if unknown.
func memTotal() shoal.Bytes {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				return shoal.Bytes(kb << 10)
			}
		}
	}
	return 0
}
