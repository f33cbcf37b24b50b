package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// defaultAgentAddr is where a local agent's API listens unless told otherwise.
const defaultAgentAddr = "127.0.0.1:7900"

// clientFlags are the flags every command that talks to an agent shares.
type clientFlags struct {
	agent     string
	token     string
	tokenFile string
	output    string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	addr := os.Getenv("SHOAL_AGENT")
	if addr == "" {
		addr = defaultAgentAddr
	}
	fs.StringVar(&c.agent, "agent", addr, "agent API address (or SHOAL_AGENT)")
	fs.StringVar(&c.token, "token", "", "agent API token (prefer SHOAL_TOKEN or --token-file, which ps does not show)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the agent API token (default: SHOAL_TOKEN, else the local agent's "+defaultDataDir+"/"+apiTokenFile+", or under SHOAL_DATA_DIR)")
	fs.StringVar(&c.output, "o", "text", "output format: text or json")
}

// resolveToken finds the API token: --token, --token-file, SHOAL_TOKEN
// (or SHOAL_API_TOKEN), then the file the agent on this machine generated
// in its data directory (SHOAL_DATA_DIR, default /var/lib/shoal). The
// token only ever goes to the --agent address.
func (c *clientFlags) resolveToken() error {
	switch {
	case c.token != "":
		return nil
	case c.tokenFile != "":
		t, err := readSecretFile("--token-file", c.tokenFile)
		c.token = t
		return err
	}
	if c.token = firstEnv("SHOAL_TOKEN", "SHOAL_API_TOKEN"); c.token != "" {
		return nil
	}
	dir := os.Getenv("SHOAL_DATA_DIR")
	if dir == "" {
		dir = defaultDataDir
	}
	if b, err := os.ReadFile(filepath.Join(dir, apiTokenFile)); err == nil {
		c.token = strings.TrimSpace(string(b))
	}
	return nil // none: the agent says 401, with what to do
}

func (c *clientFlags) check() error {
	if c.output != "text" && c.output != "json" {
		return fmt.Errorf("-o %q: want text or json", c.output)
	}
	return c.resolveToken()
}

func (c *clientFlags) client() *apiClient { return newAPIClient(c.agent, c.token) }

func init() {
	register(command{name: "status", usage: "the fleet at a glance: nodes, revisions, services, errors", run: runStatus})
	register(command{name: "members", usage: "the fleet's members with revision and capacity", run: runMembers})
	register(command{name: "logs", usage: "a service instance's output: shoal logs SERVICE [--slot N] [-f]; a job run's: shoal logs JOB --run N", run: runLogs})
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runStatus(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cf clientFlags
	fs := newFlagSet("status", stderr)
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if err := cf.check(); err != nil {
		return 1, err
	}
	var fleet fleetStatus
	if err := cf.client().getJSON("/v1/fleet", &fleet); err != nil {
		return 1, err
	}
	if cf.output == "json" {
		return 0, printJSON(stdout, fleet)
	}
	printFleet(stdout, fleet)
	if len(fleet.Errors) > 0 || len(fleet.Unplaced) > 0 {
		return 2, nil
	}
	return 0, nil
}

func printFleet(w io.Writer, f fleetStatus) {
	fmt.Fprintf(w, "revision %s (as seen by %s)\n\nNODES\n", short(f.Revision), f.Node)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tREVISION\tCPU\tMEMORY\tADDR")
	for _, m := range f.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%g\t%s\t%s\n", m.Name, m.Status, short(m.Revision), m.CPU, m.Memory, m.Addr)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nSERVICES")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDESIRED\tRUNNING\tHEALTHY\tNODES")
	for _, s := range f.Services {
		var nodes []string
		for _, n := range s.Nodes {
			nodes = append(nodes, fmt.Sprintf("%s:%d/%d/%d", n.Node, n.Healthy, n.Running, n.Desired))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\n", s.Name, s.Desired, s.Running, s.Healthy, strings.Join(nodes, " "))
	}
	tw.Flush()
	for _, u := range f.Unplaced {
		fmt.Fprintf(w, "UNPLACED %s/%d: %s\n", u.Service, u.Slot, u.Reason)
	}
	for _, e := range f.Errors {
		fmt.Fprintf(w, "ERROR %s\n", e)
	}
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	if commit == "" {
		return "-"
	}
	return commit
}

func runMembers(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cf clientFlags
	fs := newFlagSet("members", stderr)
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if err := cf.check(); err != nil {
		return 1, err
	}
	var members []memberView
	if err := cf.client().getJSON("/v1/members", &members); err != nil {
		return 1, err
	}
	if cf.output == "json" {
		return 0, printJSON(stdout, members)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tADDR\tSTATUS\tREVISION\tCPU\tMEMORY\tLABELS")
	for _, m := range members {
		var labels []string
		for k, v := range m.Labels {
			labels = append(labels, k+"="+v)
		}
		sortStrings(labels)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%g\t%s\t%s\n", m.Name, m.Addr, m.Status, short(m.Revision), m.CPU, m.Memory, strings.Join(labels, ","))
	}
	return 0, tw.Flush()
}

// runLogs reads a slot's output from the agent given by --agent; when
// the slot runs on another node, that agent fetches it from its peer.
// The CLI never sends its token anywhere else: a peer's address comes
// from gossip.
func runLogs(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cf clientFlags
	fs := newFlagSet("logs", stderr)
	cf.register(fs)
	slot := fs.Int("slot", 0, "replica (slot) index")
	follow := fs.Bool("f", false, "keep following the output")
	run := fs.Int64("run", 0, "a job's run: its number in `shoal jobs NAME`, or 1 for the latest")
	// Accept the service name before or after the flags.
	var svc string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		svc, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if svc == "" && fs.NArg() > 0 {
		svc = fs.Arg(0)
	}
	if svc == "" {
		return 1, fmt.Errorf("want a service name: shoal logs SERVICE [--slot N] [-f]")
	}
	if err := cf.check(); err != nil {
		return 1, err
	}
	if *run > 0 {
		return jobLogs(ctx, cf, svc, *run, *follow, stdout, stderr)
	}
	q := url.Values{"service": {svc}, "slot": {strconv.Itoa(*slot)}}
	if err := streamLogs(ctx, cf, q, *follow, stdout); err != nil {
		return 1, fmt.Errorf("logs of %s/%d: %w", svc, *slot, err)
	}
	return 0, nil
}

// streamLogs copies GET /v1/logs?q from the agent to stdout, until the
// stream ends or ctx does (a followed log ends only then).
func streamLogs(ctx context.Context, cf clientFlags, q url.Values, follow bool, stdout io.Writer) error {
	if follow {
		q.Set("follow", "1")
	}
	resp, err := cf.client().get("/v1/logs?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	stop := context.AfterFunc(ctx, func() { resp.Body.Close() })
	defer stop()
	if _, err := io.Copy(stdout, resp.Body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("read: %w", err)
	}
	return nil
}

func sortStrings(s []string) { sort.Strings(s) }

func joinHostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
