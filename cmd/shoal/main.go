// Command shoal is the one binary of Shoal: the per-node agent, the local
// dev fleet, and the CLI (validate, plan, status, members, logs).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"sync/atomic"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand. Each lives in its own file and registers itself
// in init, so commands stay independent of each other.
type command struct {
	name  string
	usage string // one line, shown by "shoal help"
	// run gets the arguments after the command name. It returns the exit
	// code; an error is printed as "shoal NAME: err" and exits 1.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error)
}

var commands = map[string]command{}

func register(c command) {
	if _, dup := commands[c.name]; dup {
		panic("shoal: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// exitError carries an exit code other than 1 out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signalContext()
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// tearingDown is set while a command removes what it started: a second
// signal then waits for a third before it forces exit.
var tearingDown atomic.Bool

// signalContext is cancelled on the first SIGINT/SIGTERM; a second one
// forces exit, so a stuck shutdown never traps the user.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-ctx.Done():
			return
		}
		<-ch
		if tearingDown.Load() {
			// What is torn down now (shoal dev's containers, containerd,
			// namespaces) would stay behind: finish it unless told again.
			fmt.Fprintln(os.Stderr, "shoal: still cleaning up so that nothing is left running; a third signal exits now and leaves it behind")
			<-ch
		}
		fmt.Fprintln(os.Stderr, "shoal: second signal, exiting now")
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "shoal: unknown command %q\n\n", args[0])
		printUsage(stderr)
		return 1
	}
	code, err := c.run(ctx, args[1:], stdout, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "shoal %s: %v\n", c.name, err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "Shoal: a GitOps, pull-based container orchestrator with no central server.")
	fmt.Fprintln(w, "\nUsage: shoal COMMAND [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		if commands[n].usage != "" { // hidden: internal to the binary
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].usage)
	}
	fmt.Fprintln(w, "\nRun 'shoal COMMAND -h' for the flags of a command.")
}

// newFlagSet returns a flag set that reports errors instead of exiting, and
// prints its usage to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("shoal "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func init() {
	register(command{name: "version", usage: "print the version", run: func(_ context.Context, _ []string, stdout, _ io.Writer) (int, error) {
		fmt.Fprintf(stdout, "shoal %s\n", version)
		return 0, nil
	}})
}
