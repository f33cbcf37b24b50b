// Package ctrtest is the test harness for code that runs real containers:
// a private containerd with its own root, state and socket, test images
// built from examples/images, and a registry in the test process that
// serves them. Everything is stopped and removed by t.Cleanup.
package ctrtest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

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
		d.Stop()
		// Shims of containers the test left running are stopped by the
		// runtime tests themselves; unmount whatever is left and remove.
		exec.Command("umount", "-R", dir).Run()
		os.RemoveAll(dir)
	})
	return d.Socket
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
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "..", "examples", "images", "testapp")
		out := filepath.Join(os.TempDir(), fmt.Sprintf("shoal-testapp-%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build testapp: %v\n%s", err, o)
			return
		}
		binary, buildErr = os.ReadFile(out)
		os.Remove(out)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// Image builds a one-layer image holding bin at /app, run as /app.
func Image(bin []byte) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	tw.Write(bin)
	tw.Close()
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (ioReadCloser, error) { return nopCloser{bytes.NewReader(layerBytes)}, nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = runtime.GOARCH, "linux"
	cfg.Config.Entrypoint = []string{"/app"}
	return mutate.ConfigFile(img, cfg)
}

// Registry serves images over plain HTTP on 127.0.0.1 for the test.
type Registry struct {
	Host string // 127.0.0.1:port
	srv  *httptest.Server
}

// NewRegistry starts an in-process registry; Close stops it (also on
// cleanup), so tests can also take it down on purpose.
func NewRegistry(t testing.TB) *Registry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nilLogger())))
	t.Cleanup(srv.Close)
	return &Registry{Host: strings.TrimPrefix(srv.URL, "http://"), srv: srv}
}

// Close stops the registry.
func (r *Registry) Close() { r.srv.Close() }

// Push stores an image as host/repo:tag and returns the reference.
func (r *Registry) Push(t testing.TB, repoTag string, img v1.Image) string {
	t.Helper()
	ref := r.Host + "/" + repoTag
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// PushTestApp builds the test app image and pushes it as repoTag.
func (r *Registry) PushTestApp(t testing.TB, repoTag string) string {
	t.Helper()
	img, err := Image(TestAppBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	return r.Push(t, repoTag, img)
}
