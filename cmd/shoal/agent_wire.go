package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/mesh"
	"github.com/shoal-run/shoal/runtime"
)

// build constructs every part from the config. Nothing runs until run.
func (a *agent) build(ctx context.Context) error {
	cfg := a.cfg
	lo, hi, _ := parsePortRange(cfg.PortRange)
	_, apiPortStr, _ := net.SplitHostPort(cfg.API)
	apiPort, _ := strconv.Atoi(apiPortStr)
	bindHost, bindPortStr, _ := net.SplitHostPort(cfg.Bind)
	bindPort, _ := strconv.Atoi(bindPortStr)
	keys, err := gossipKeys(cfg)
	if err != nil {
		return err
	}
	token, generated, err := loadAPIToken(cfg.APIToken, cfg.DataDir)
	if err != nil {
		return err
	}
	if generated {
		a.log.Info("api token generated; the CLI on this machine reads it from there", "file", filepath.Join(cfg.DataDir, apiTokenFile))
	}

	ingress := cfg.Ingress
	if ip := net.ParseIP(ingress); ip == nil || ip.IsUnspecified() {
		ingress = a.addr // <service>.shoal answers this node's balancer
	}
	records := func() []shoal.Record { return a.mesh.Records() } // a.mesh is set before anything runs
	_, dnsPortStr, _ := net.SplitHostPort(cfg.DNS)
	dnsPort, _ := strconv.Atoi(dnsPortStr)
	resolvConf := ""
	if cfg.ContainerDNS != "off" && cfg.ContainerDNS != "" {
		resolvConf = filepath.Join(cfg.DataDir, "resolv.conf")
	}

	rt, err := runtime.New(ctx, runtime.Config{
		Socket: cfg.ContainerdSocket, Namespace: cfg.ContainerdNamespace,
		DataDir: filepath.Join(cfg.DataDir, "runtime"), StartContainerd: cfg.StartContainerd,
		NodeName: cfg.NodeName, PortLow: lo, PortHigh: hi,
		InsecureRegistries: cfg.InsecureRegistries, DockerConfig: cfg.DockerConfig,
		Network: runtime.NetworkConfig{
			Mode: cfg.Network, Bridge: cfg.Bridge, Subnet: cfg.ContainerSubnet,
			BinDirs: cfg.CNIBinDirs, ConfDir: cfg.CNIConfDir,
			DenyPorts: []int{apiPort, bindPort, dnsPort},
		},
		ResolvConf: resolvConf, Logger: a.log.With("part", "runtime"),
	})
	if err != nil {
		return err
	}
	a.rt = rt
	a.parts.runs = append(a.parts.runs, rt.Run)
	a.parts.closers = append(a.parts.closers, rt.Close)
	if resolvConf != "" {
		if err := a.containerDNS(ingress, records, resolvConf); err != nil {
			rt.Close()
			return err
		}
	}

	m, err := mesh.New(mesh.Config{
		NodeName: cfg.NodeName, BindAddr: bindHost, BindPort: bindPort,
		AdvertiseAddr: a.addr, Join: cfg.Join, Keys: keys, KeyringFile: cfg.gossipKeyringFile(), InsecureGossip: cfg.InsecureGossip,
		CPU: cfg.CPU, Memory: cfg.Memory, Labels: cfg.Labels, APIPort: apiPort,
		Logger: a.log.With("part", "mesh"), OnAnnounce: a.onAnnounce,
		ReconnectTimeout: cfg.ReconnectTimeout, TombstoneTimeout: cfg.TombstoneTimeout, RejoinMaxInterval: cfg.RejoinMaxInterval,
		PeersFile: filepath.Join(cfg.DataDir, "peers.json"),
	})
	if err != nil {
		rt.Close()
		return err
	}
	a.mesh = m
	a.parts.runs = append(a.parts.runs, m.Run)
	a.parts.closers = append(a.parts.closers, func() error {
		if cfg.DrainOnExit {
			return m.Close() // leaving for good: peers move its slots now
		}
		// A restart keeps the containers: peers keep its records and
		// slots for a grace period instead of moving them.
		return m.Pause()
	})

	a.dns = mesh.NewDNS(mesh.DNSConfig{Addr: cfg.DNS, BalancerAddr: ingress, Upstreams: cfg.DNSUpstreams, Logger: a.log.With("part", "dns"), Services: a.serviceNames, Generation: m.Generation}, m.Records)
	a.parts.runs = append(a.parts.runs, a.dns.Run)
	a.lb = mesh.NewBalancer(mesh.BalancerConfig{ListenHost: cfg.Ingress, LocalNode: cfg.NodeName, Loops: cfg.BalancerThreads, Generation: m.Generation, Logger: a.log.With("part", "balancer")}, m.Records)
	a.parts.runs = append(a.parts.runs, a.lb.Run)
	a.parts.closers = append(a.parts.closers, a.lb.Close)

	sc, err := a.syncConfig()
	if err != nil {
		return err
	}
	syncer, err := gitsync.New(sc)
	if err != nil {
		return err
	}
	a.sync = syncer
	a.parts.runs = append(a.parts.runs, syncer.Run)
	a.parts.closers = append(a.parts.closers, syncer.Close)

	api := &apiServer{view: a, token: token, metrics: metricsHandler(a.metricsSnapshot), jobs: a, log: a.log,
		self: cfg.NodeName, slotExists: a.slotExists, keyring: m}
	if cfg.WebhookSecret != "" {
		api.webhook = syncer.WebhookHandler(cfg.WebhookSecret)
	}
	h := api.handler()
	a.parts.runs = append(a.parts.runs, func(ctx context.Context) error { return serveAPI(ctx, cfg.API, h, a.log) })
	return nil
}

// containerDNS starts listening on the address containers' resolv.conf
// names (DNS needs port 53 there: the bridge's gateway by default) and
// writes that resolv.conf at path. When it cannot listen, containers get
// the host's resolvers instead and the agent says so.
func (a *agent) containerDNS(ingress string, records func() []shoal.Record, path string) error {
	addr := a.cfg.ContainerDNS
	if addr == "auto" {
		addr = a.addr
		if gw := a.rt.Gateway(); gw.IsValid() {
			addr = gw.String()
		}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "53")
	}
	d := mesh.NewDNS(mesh.DNSConfig{Addr: addr, BalancerAddr: ingress, Upstreams: a.cfg.DNSUpstreams, Logger: a.log.With("part", "dns"), Services: a.serviceNames, Generation: func() uint64 { return a.mesh.Generation() }, RateLimit: containerDNSRate, AllowedSources: a.dnsSources()}, records)
	if err := d.Listen(); err != nil {
		a.log.Warn("containers get the host's resolv.conf: cannot serve them DNS; free the port or set --container-dns", "addr", addr, "err", err)
		host, err := os.ReadFile("/etc/resolv.conf")
		if err != nil {
			return fmt.Errorf("container resolv.conf: %w", err)
		}
		return os.WriteFile(path, host, 0o644)
	}
	host, _, _ := net.SplitHostPort(addr)
	// search shoal first: a bare service name reaches this node's balancer.
	content := "# Written by shoal agent: this node's mesh DNS.\nnameserver " + host + "\nsearch shoal service.shoal\noptions ndots:1\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		d.Close()
		return fmt.Errorf("container resolv.conf: %w", err)
	}
	a.cdns = d
	a.parts.runs = append(a.parts.runs, d.Run)
	return nil
}

// dnsSources are who the containers' DNS answers: the containers on the
// bridge, and this node itself (host-networked containers, the operator).
// Anyone else gets REFUSED: it is no open resolver.
func (a *agent) dnsSources() []netip.Prefix {
	out := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	if p := a.rt.Subnet(); p.IsValid() {
		out = append(out, p)
	}
	addrs, _ := net.InterfaceAddrs()
	for _, ad := range addrs {
		if ipn, ok := ad.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
				ip = ip.Unmap()
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
	}
	return out
}

// containerDNSRate is the replies per second one source gets from the
// containers' DNS (bursts of twice that): plenty for a container's
// resolver, little for a reflection attack.
const containerDNSRate = 200

// serviceNames lists the services of the revision in force.
func (a *agent) serviceNames() []string {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	if rev == nil {
		return nil
	}
	names := make([]string, len(rev.Spec.Services))
	for i, s := range rev.Spec.Services {
		names[i] = s.Name
	}
	return names
}

// slotExists says whether the revision in force has slot: a replica of a
// service (up to its autoscaling maximum) or a run of a job.
func (a *agent) slotExists(slot shoal.Slot) bool {
	a.mu.Lock()
	rev := a.rev
	a.mu.Unlock()
	if rev == nil || slot.Index < 0 {
		return false
	}
	for _, s := range rev.Spec.Services {
		if s.Name == slot.Service {
			n := s.Replicas
			if s.Scale != nil {
				n = max(n, s.Scale.Max)
			}
			return slot.Index < n
		}
	}
	for _, j := range rev.Spec.Jobs {
		if j.Name == slot.Service {
			return true // a run's index is its tick's Unix time
		}
	}
	return false
}

// gossipKeys reads the Serf encryption keys, primary first, from
// --gossip-key-file or --gossip-key (read into GossipKey by finish), or a
// --keyring file. A keyring kept in --data-dir by an earlier run wins over
// both (mesh.Config.KeyringFile): it has the keys of the last rotation.
func gossipKeys(cfg agentConfig) ([][]byte, error) {
	if cfg.Keyring != "" {
		keys, err := mesh.ReadKeyringFile(cfg.Keyring)
		if err != nil {
			return nil, fmt.Errorf("--keyring: %w", err)
		}
		return keys, nil
	}
	if cfg.GossipKey == "" {
		return nil, nil
	}
	key, err := decodeGossipKey(cfg.GossipKey)
	if err != nil {
		return nil, err
	}
	return [][]byte{key}, nil
}

func decodeGossipKey(s string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || (len(key) != 16 && len(key) != 24 && len(key) != 32) {
		return nil, errors.New("gossip key: want base64 of 16, 24 or 32 bytes (make one with `shoal keygen`)")
	}
	return key, nil
}

// metricsSnapshot gathers what /metrics reports.
func (a *agent) metricsSnapshot() metricsSnapshot {
	a.mu.Lock()
	rev, plan, m := a.rev, a.plan, a.m
	a.mu.Unlock()
	s := metricsSnapshot{
		SyncErrors: map[string]float64{}, Instances: map[[2]string]float64{}, Restarts: map[string]float64{},
		Members: map[string]float64{}, DNSQueries: map[string]float64{},
		BalancerConns: map[string]float64{}, BalancerActive: map[string]float64{}, BalancerBytes: map[[2]string]float64{},
		BalancerRate: map[string]float64{}, BalancerFailed: map[string]float64{},
		PlanCount: m.plans, PlanSeconds: m.planTime.Seconds(), Reconciles: m.reconciles,
	}
	if rev != nil {
		s.Revision = rev.Commit
	}
	st := a.sync.Status()
	if !st.LastFetch.IsZero() {
		s.LastFetchUnix = float64(st.LastFetch.UnixNano()) / float64(time.Second)
	}
	if st.Error != nil {
		s.SyncErrors[st.Error.What] = 1
		s.SyncAttempts = float64(st.Error.Attempts)
	}
	if plan != nil {
		s.Placed, s.Unplaced = float64(len(plan.Assignments)), float64(len(plan.Unplaced))
		s.LocalSlots = float64(len(plan.ForNode(a.cfg.NodeName)))
	}
	a.mu.Lock()
	s.JobLastSuccess, s.JobLastFailure, s.JobRuns = a.jobs.metrics()
	a.mu.Unlock()
	for _, in := range a.rt.Instances() {
		s.Instances[[2]string{in.Service, string(in.State)}]++
		s.Restarts[in.Service] += float64(in.Restarts)
	}
	for _, mb := range a.mesh.Members() {
		s.Members[mb.Status]++
	}
	s.Records = float64(len(a.mesh.Records()))
	for _, d := range []*mesh.DNS{a.dns, a.cdns} {
		if d == nil {
			continue
		}
		for rc, n := range d.Stats() {
			s.DNSQueries[rc] += float64(n)
		}
	}
	for svc, st := range a.lb.Stats() {
		s.BalancerConns[svc] = float64(st.Connections)
		s.BalancerActive[svc] = float64(st.Active)
		s.BalancerBytes[[2]string{svc, "in"}] = float64(st.BytesIn)
		s.BalancerBytes[[2]string{svc, "out"}] = float64(st.BytesOut)
		s.BalancerRate[svc] = st.Rate
		s.BalancerFailed[svc] = float64(st.DialFailures)
	}
	return s
}
