// Package ctrtest is the test harness for code that runs real containers:
// a private containerd with its own root, state and socket, the test image
// built from examples/images/testapp, and a registry in the test process
// that serves it. Everything is stopped and removed by t.Cleanup.
package ctrtest

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/namespaces"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/shoal-run/shoal/internal/imagebuild"
	shoalrt "github.com/shoal-run/shoal/runtime"
)

// Containerd starts a private containerd for the test and returns its
// socket. It fails the test, never skips it, when containerd or runc is
// missing: CI installs them (scripts/install-deps).
func Containerd(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("containerd tests need root")
	}
	// Unix socket paths are limited to 108 bytes: keep the dir short.
	dir, err := os.MkdirTemp("/tmp", "ctr")
	if err != nil {
		t.Fatal(err)
	}
	d, err := shoalrt.StartDaemon(context.Background(), dir, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatalf("start containerd: %v (run scripts/install-deps)", err)
	}
	t.Cleanup(func() {
		// Containers outlive their agent by design; remove every one so no
		// shim is left running once the daemon stops.
		RemoveAll(d.Socket)
		d.Stop()
		exec.Command("umount", "-R", dir).Run()
		os.RemoveAll(dir)
	})
	return d.Socket
}

// RemoveAll kills and deletes every container in every namespace of the
// containerd at socket.
func RemoveAll(socket string) error {
	client, err := containerd.New(socket)
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	nss, err := client.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	for _, ns := range nss {
		nctx := namespaces.WithNamespace(ctx, ns)
		cs, _ := client.Containers(nctx)
		for _, c := range cs {
			if task, err := c.Task(nctx, nil); err == nil {
				task.Delete(nctx, containerd.WithProcessKill)
			}
			c.Delete(nctx, containerd.WithSnapshotCleanup)
		}
	}
	return nil
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var (
	buildOnce sync.Once
	binary    []byte
	buildErr  error
)

// TestAppBinary builds examples/images/testapp once per test process.
func TestAppBinary(t testing.TB) []byte {
	t.Helper()
	buildOnce.Do(func() { binary, buildErr = imagebuild.Build(imagebuild.TestAppDir()) })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// Registry serves images over plain HTTP for the test.
type Registry struct {
	*imagebuild.Registry
}

// NewRegistry starts a registry on 127.0.0.1; it is closed on cleanup, and
// tests may Close it earlier to take the registry down.
func NewRegistry(t testing.TB) *Registry { return NewRegistryOn(t, "127.0.0.1:0") }

// NewRegistryOn starts a registry on addr.
func NewRegistryOn(t testing.TB, addr string) *Registry {
	t.Helper()
	r, err := imagebuild.Serve(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return &Registry{r}
}

// Push stores an image as host/repo:tag and returns the reference.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := r.Registry.Push(repoTag, img)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// PushTestApp pushes the test app image as repoTag.
func (r *Registry) PushTestApp(t testing.TB, repoTag string) string {
	t.Helper()
	img, err := imagebuild.Image(TestAppBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	return r.Push(t, repoTag, img)
}
