package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shoal-run/shoal/internal/githttp"
)

func init() {
	register(command{
		name:  "serve-repo",
		usage: "serve a spec repository read-only over Git smart HTTP, for fleets without a Git host: shoal serve-repo [--addr HOST:PORT] DIR",
		run:   runServeRepo,
	})
}

// runServeRepo serves one repository (a work tree or a bare repository)
// until cancelled. Agents point --repo at http://ADDR/NAME.git; any path
// serves the same repository.
func runServeRepo(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlagSet("serve-repo", stderr)
	addr := fs.String("addr", "127.0.0.1:8700", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if fs.NArg() != 1 {
		return 1, errors.New("want the repository directory: shoal serve-repo [--addr HOST:PORT] DIR")
	}
	gitDir, name, err := gitDirOf(fs.Arg(0))
	if err != nil {
		return 1, err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return 1, fmt.Errorf("listen %s: %w", *addr, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	srv := &http.Server{Handler: githttp.Handler(gitDir, log), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "serving %s at http://%s/%s.git\n", gitDir, ln.Addr(), name)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown) //nolint:errcheck // exiting anyway
		return 0, nil
	case err := <-errc:
		return 1, fmt.Errorf("serve: %w", err)
	}
}

// gitDirOf finds the Git directory of a work tree or bare repository, and
// the name the repository is served under.
func gitDirOf(dir string) (gitDir, name string, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", err
	}
	name = strings.TrimSuffix(filepath.Base(abs), ".git")
	if st, err := os.Stat(filepath.Join(abs, ".git")); err == nil && st.IsDir() {
		return filepath.Join(abs, ".git"), name, nil
	}
	if _, err := os.Stat(filepath.Join(abs, "HEAD")); err == nil {
		return abs, name, nil // bare
	}
	return "", "", fmt.Errorf("%s is not a Git repository (no .git directory, no HEAD)", dir)
}
