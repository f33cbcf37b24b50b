package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shoal-run/shoal"
	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/mesh"
)

func init() {
	register(command{
		name:  "agent",
		usage: "run this node's daemon: shoal agent --repo URL [flags]",
		run:   runAgent,
	})
}

func runAgent(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cfg agentConfig
	fs := newFlagSet("agent", stderr)
	cfg.flags(fs)
	configFile := fs.String("config", "", "JSON file of settings named like these flags; flags override it")
	// The config file is applied first so that the command line wins.
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--config="); ok {
			*configFile = v
		} else if (a == "--config" || a == "-config") && i+1 < len(args) {
			*configFile = args[i+1]
		}
	}
	if *configFile != "" {
		if err := applyConfigFile(fs, *configFile); err != nil {
			return 1, err
		}
	}
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if fs.NArg() > 0 {
		return 1, fmt.Errorf("unexpected arguments %q: every setting is a flag (shoal agent -h)", fs.Args())
	}
	if err := cfg.finish(); err != nil {
		return 1, err
	}
	// Only here, where the agent owns the process: each loop gets a P of
	// its own, so holding it while traffic flows takes none from gossip,
	// DNS or the reconciler.
	mesh.ReserveProcs(cfg.BalancerThreads)
	log := newLogger(stderr, cfg.LogLevel).With("node", cfg.NodeName)
	a, err := newAgent(ctx, cfg, log)
	if err != nil {
		return 1, err
	}
	return 0, a.run(ctx)
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// agentParts are the constructed pieces; closers run in reverse order.
type agentParts struct {
	runs    []func(context.Context) error
	closers []func() error
}

func newAgent(ctx context.Context, cfg agentConfig, log *slog.Logger) (*agent, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	a := &agent{cfg: cfg, log: log, poke: make(chan struct{}, 1), held: map[shoal.Slot]time.Time{}, startedAt: time.Now(),
		scaler: autoscaler{downDelay: cfg.ScaleDownDelay}}
	addr, err := advertiseAddr(cfg)
	if err != nil {
		return nil, err
	}
	a.addr = addr
	a.jobs = newJobState(cfg.NodeName, addr, cfg.DataDir, log, a.startedAt)
	return a, a.build(ctx)
}

// advertiseAddr picks the address peers and DNS answers use for this node.
func advertiseAddr(cfg agentConfig) (string, error) {
	if cfg.Advertise != "" {
		host := cfg.Advertise
		if h, _, err := net.SplitHostPort(cfg.Advertise); err == nil {
			host = h
		}
		return host, nil
	}
	host, _, _ := net.SplitHostPort(cfg.Bind)
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return host, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("find an address to advertise: %w (set --advertise)", err)
	}
	for _, ad := range addrs {
		if ipn, ok := ad.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String(), nil
		}
	}
	return "127.0.0.1", nil
}

// syncConfig turns the agent's flags into gitsync's config.
func (a *agent) syncConfig() (gitsync.Config, error) {
	cfg := a.cfg
	sc := gitsync.Config{
		URL: cfg.Repo, Branch: cfg.Branch, Path: cfg.Path,
		DataDir:              filepath.Join(cfg.DataDir, "git"),
		PollInterval:         cfg.Poll,
		RefuseNonFastForward: cfg.RefuseForcePush,
		EvalCommand:          evalCommand(),
		Logger:               a.log.With("part", "gitsync"),
		OnRevision:           a.onRevision,
		OnPush: func(commit string) {
			if err := a.mesh.Announce(commit); err != nil {
				a.log.Warn("relay pushed commit", "commit", commit, "err", err)
			}
		},
		Auth: gitsync.Auth{
			Username: cfg.GitUser, Password: cfg.GitPassword, Token: cfg.GitToken,
			SSHKeyPath: cfg.SSHKey, KnownHostsPath: cfg.KnownHosts,
		},
	}
	if cfg.TrustedKeys != "" {
		b, err := os.ReadFile(cfg.TrustedKeys)
		if err != nil {
			return sc, fmt.Errorf("--trusted-keys: %w", err)
		}
		sc.TrustedPGPKeyring = string(b)
	}
	if cfg.AllowedSigners != "" {
		b, err := os.ReadFile(cfg.AllowedSigners)
		if err != nil {
			return sc, fmt.Errorf("--allowed-signers: %w", err)
		}
		sc.AllowedSigners = string(b)
	}
	return sc, nil
}

// run starts every part, runs until ctx ends, then shuts down in order:
// stop reconciling, leave the gossip, and keep containers running unless
// --drain was given.
func (a *agent) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(a.parts.runs)+1)
	for _, run := range a.parts.runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				errc <- err
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); a.loop(ctx) }()
	a.log.Info("agent started", "addr", a.addr, "api", a.cfg.API, "cpu", a.cfg.CPU, "memory", a.cfg.Memory.String())
	<-ctx.Done()
	a.log.Info("agent stopping")
	wg.Wait()
	if a.cfg.DrainOnExit {
		a.log.Info("draining: stopping this node's containers")
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		if err := a.rt.Drain(dctx); err != nil {
			a.log.Warn("drain", "err", err)
		} else if err := a.rt.RemoveNetwork(); err != nil {
			a.log.Warn("remove the container network", "err", err)
		}
		dcancel()
	}
	var errs []error
	for i := len(a.parts.closers) - 1; i >= 0; i-- {
		if err := a.parts.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	close(errc)
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
