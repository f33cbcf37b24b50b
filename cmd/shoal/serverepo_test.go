package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// TestServeRepo serves a work tree and clones it over HTTP with go-git.
func TestServeRepo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fleet")
	repo, err := git.PlainInit(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "web.yaml"), []byte("name: web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wt, _ := repo.Worktree()
	wt.Add("web.yaml")
	if _, err := wt.Commit("web", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@example.com", When: time.Now()}}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		c, err := runServeRepo(ctx, []string{"--addr", "127.0.0.1:0", dir}, pw, io.Discard)
		if err != nil {
			t.Error(err)
		}
		pw.Close()
		code <- c
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	url := strings.TrimSpace(line[strings.LastIndex(line, " at ")+4:])
	if !strings.HasSuffix(url, "/fleet.git") {
		t.Errorf("served at %q, want a URL ending in /fleet.git", url)
	}
	clone := t.TempDir()
	if _, err := git.PlainClone(clone, false, &git.CloneOptions{URL: url}); err != nil {
		t.Fatalf("clone %s: %v", url, err)
	}
	if b, err := os.ReadFile(filepath.Join(clone, "web.yaml")); err != nil || string(b) != "name: web\n" {
		t.Errorf("cloned web.yaml: %q, %v", b, err)
	}
	cancel()
	select {
	case c := <-code:
		if c != 0 {
			t.Errorf("exit code %d after cancel", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve-repo did not stop on cancel")
	}
}

func TestServeRepoRefusesNonRepository(t *testing.T) {
	_, err := runServeRepo(context.Background(), []string{"--addr", "127.0.0.1:0", t.TempDir()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not a Git repository") {
		t.Errorf("err = %v, want it to say the directory is not a Git repository", err)
	}
}
