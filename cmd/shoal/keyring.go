package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/shoal-run/shoal/mesh"
)

func init() {
	register(command{name: "keygen", usage: "print a new gossip encryption key (base64, 32 bytes)", run: runKeygen})
	register(command{name: "keyring", usage: "the fleet's gossip keys: shoal keyring list | install KEY | use KEY | remove KEY (KEY - reads stdin)", run: runKeyring})
}

func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("keygen", stderr)
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return 1, fmt.Errorf("keygen: %w", err)
	}
	fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key))
	return 0, nil
}

// runKeyring rotates the gossip key with no downtime: install the new
// key everywhere, use it, then remove the old one. Each step is a Serf
// query to every member, asked through the --agent.
func runKeyring(_ context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var cf clientFlags
	fs := newFlagSet("keyring", stderr)
	cf.register(fs)
	const usage = "want: shoal keyring list | install KEY | use KEY | remove KEY"
	var op string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		op, args = args[0], args[1:]
	}
	var key string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") || len(args) > 0 && args[0] == "-" {
		key, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if key == "" && fs.NArg() > 0 {
		key = fs.Arg(0)
	}
	if err := cf.check(); err != nil {
		return 1, err
	}
	var reply keyringReply
	switch op {
	case "list":
		if err := cf.client().getJSON("/v1/keyring", &reply); err != nil {
			return 1, err
		}
	case "install", "use", "remove":
		if key == "-" {
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			if err != nil && line == "" {
				return 1, fmt.Errorf("keyring %s: read the key from stdin: %w", op, err)
			}
			key = line
		}
		key = strings.TrimSpace(key)
		if key == "" {
			return 1, fmt.Errorf("keyring %s: %s", op, usage)
		}
		if _, err := decodeGossipKey(key); err != nil {
			return 1, err
		}
		if _, err := cf.client().postJSON("/v1/keyring/"+op, map[string]string{"key": key}, &reply); err != nil {
			return 1, err
		}
	default:
		return 1, fmt.Errorf("keyring: %s", usage)
	}
	if cf.output == "json" {
		if err := printJSON(stdout, reply); err != nil {
			return 1, err
		}
	} else {
		printKeyring(stdout, op, reply.Status)
	}
	if reply.Error != "" {
		return 1, fmt.Errorf("keyring %s: %s", op, reply.Error)
	}
	return 0, nil
}

func printKeyring(w io.Writer, op string, st mesh.KeyringStatus) {
	fmt.Fprintf(w, "%s: %d of %d members answered\n", op, st.Responses, st.Members)
	if len(st.Keys) > 0 {
		keys := make([]string, 0, len(st.Keys))
		for k := range st.Keys {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tHELD BY\tPRIMARY ON")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", k, st.Keys[k], st.Primary[k])
		}
		tw.Flush()
	}
	nodes := make([]string, 0, len(st.Errors))
	for n := range st.Errors {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		fmt.Fprintf(w, "ERROR %s: %s\n", n, st.Errors[n])
	}
}
