package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-run/shoal/internal/devfleet"
)

func init() {
	register(command{
		name:  "dev",
		usage: "run a real local fleet on this machine: shoal dev [--nodes 3]",
		run:   runDev,
	})
}

func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("dev", stderr)
	nodes := fs.Int("nodes", 3, "agents to run, each in its own network namespace")
	dir := fs.String("dir", filepath.Join(os.TempDir(), "shoal-dev"), "working directory: spec repository, agent data and logs")
	seed := fs.String("seed", "examples/fleet", "spec tree the repository starts with")
	app := fs.String("app", "examples/images/testapp", "Go source of the example image the registry serves")
	prefix := fs.String("prefix", "shoal", "name prefix of the namespaces (8 characters at most)")
	subnet := fs.String("subnet", "10.213.0.0/24", "private /24 for the fleet network")
	loopback := fs.Bool("loopback", false, "run the agents on loopback addresses 127.x.y.N instead of network namespaces (automatic when namespaces cannot be made)")
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if *nodes < 1 || *nodes > 20 {
		return 1, fmt.Errorf("--nodes %d: want 1 to 20", *nodes)
	}
	if st, err := os.Stat(*seed); err != nil || !st.IsDir() {
		return 1, fmt.Errorf("--seed %s: not a directory (run from a checkout of Shoal, or point --seed at a spec tree)", *seed)
	}
	if st, err := os.Stat(filepath.Join(*app, "main.go")); err != nil || st.IsDir() {
		return 1, fmt.Errorf("--app %s: no main.go there (run from a checkout of Shoal, or point --app at the example image's source)", *app)
	}
	appDir, err := filepath.Abs(*app)
	if err != nil {
		return 1, err
	}
	bin, err := os.Executable()
	if err != nil {
		return 1, err
	}
	os.RemoveAll(*dir) // a fresh fleet each time
	log := newLogger(stderr, "info")
	fmt.Fprintf(stdout, "Starting a %d-node Shoal fleet on this machine…\n", *nodes)
	f, err := devfleet.Start(ctx, devfleet.Config{
		Nodes: *nodes, Prefix: *prefix, Subnet: *subnet, Binary: bin, Dir: *dir,
		Seed: os.DirFS(*seed), AppDir: appDir, Loopback: *loopback, Logger: log,
	})
	if err != nil {
		return 1, fmt.Errorf("start the fleet: %w", err)
	}
	defer func() {
		tearingDown.Store(true)
		defer tearingDown.Store(false)
		fmt.Fprintln(stdout, "\nTearing down: agents, containers, containerd, namespaces…")
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "teardown: %v\n", err)
		}
		fmt.Fprintln(stdout, "Done; nothing left running.")
	}()
	ns := f.Nodes()
	fmt.Fprintf(stdout, `
The fleet is up. Specs live in a Git repository, which the agents fetch
over HTTP from %s:

    %s

Change the fleet by committing there, for example:

    cd %s
    sed -i 's/replicas: 5/replicas: 2/' services/billing.yaml
    git commit -am "fewer billing replicas"

Every node polls the repository each second and announces what it finds.
Talk to the fleet (token %s):

    SHOAL_TOKEN=%s shoal status --agent %s
    curl http://%s:8080/            # web, through node-1's balancer
    curl http://%s/                 # billing: busybox httpd, on its port 80
    redis-cli -h %s ping            # cache: redis-server, on its port 6379
    dig @%s -p 8600 web.service.shoal

Agent logs: %s/node-*.log.  Ctrl-C stops everything.

`, f.RepoURL, f.RepoDir, f.RepoDir, f.Token, f.Token, ns[0].API, ns[0].Addr, ns[0].Addr, ns[0].Addr, ns[0].Addr, *dir)

	// Show convergence as it happens: print the fleet whenever it changes.
	client := newAPIClient(ns[0].API, f.Token)
	last := ""
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var fleet fleetStatus
		if err := client.getJSON("/v1/fleet", &fleet); err == nil {
			var b strings.Builder
			printFleet(&b, fleet)
			if s := b.String(); s != last {
				fmt.Fprintf(stdout, "── %s ──\n%s\n", time.Now().Format(time.TimeOnly), s)
				last = s
			}
		}
		select {
		case <-ctx.Done():
			return 0, nil
		case <-tick.C:
		}
	}
}
