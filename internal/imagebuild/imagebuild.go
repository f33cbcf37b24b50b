// Package imagebuild makes the small images the demo fleet and the tests
// run: a static Go program in one OCI layer, pushed to a registry served in
// process. No registry outside this machine is needed.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Build compiles the Go main package in srcDir into a static binary.
func Build(srcDir string) ([]byte, error) {
	out, err := os.CreateTemp("", "shoal-image-*")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out.Name(), ".")
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build %s: %v\n%s", srcDir, err, o)
	}
	return os.ReadFile(out.Name())
}

// Image makes a one-layer image holding bin at /app, run as /app.
func Image(bin []byte) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return oneLayer(buf.Bytes(), []string{"/app"}, "")
}

// oneLayer makes an image of one tar layer that runs entrypoint in
// workDir (the image's default when empty).
func oneLayer(data []byte, entrypoint []string, workDir string) (v1.Image, error) {
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
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
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.WorkingDir = workDir
	return mutate.ConfigFile(img, cfg)
}

// Registry is an OCI registry served by this process over plain HTTP.
type Registry struct {
	Host string // host:port
	srv  *http.Server
}

// Serve starts a registry on addr (host:port, port 0 for any).
func Serve(addr string) (*Registry, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	return &Registry{Host: ln.Addr().String(), srv: srv}, nil
}

// Close stops the registry.
func (r *Registry) Close() error { return r.srv.Close() }

// Push stores img as host/repoTag and returns the full reference.
func (r *Registry) Push(repoTag string, img v1.Image) (string, error) {
	ref := r.Host + "/" + repoTag
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(tag, img); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return ref, nil
}

// TestAppDir is examples/images/testapp in this source tree, found from
// this file's path (the demo and the tests run from a checkout).
func TestAppDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "images", "testapp")
}

// Program packs a program installed on this machine (from a Debian
// package: software not written for Shoal) with the shared libraries it
// links, plus extra files (image path → content), into a one-layer image
// that runs entrypoint.
func Program(path string, extra map[string]string, entrypoint ...string) (v1.Image, error) {
	files := map[string]string{path: path} // image path → host path
	out, err := exec.Command("ldd", path).CombinedOutput()
	if err == nil { // a static binary makes ldd fail: nothing more to pack
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				files[f[2]] = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				files[f[0]] = f[0]
			}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mkdirs := func(p string) error {
		var parts []string
		for d := filepath.Dir(p); d != "/" && d != "."; d = filepath.Dir(d) {
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			if d := parts[i]; !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	add := func(name string, data []byte, mode int64) error {
		if err := mkdirs(name); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(name, "/"), Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(files[n]) // follows links: the file itself
		if err != nil {
			return nil, fmt.Errorf("pack %s: %w", n, err)
		}
		if err := add(n, data, 0o755); err != nil {
			return nil, err
		}
	}
	extras := make([]string, 0, len(extra))
	for n := range extra {
		extras = append(extras, n)
	}
	sort.Strings(extras)
	for _, n := range extras {
		if err := add(n, []byte(extra[n]), 0o644); err != nil {
			return nil, err
		}
	}
	if err := mkdirs("/tmp/x"); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return oneLayer(buf.Bytes(), entrypoint, "/tmp")
}

// BusyboxHTTPD is busybox's web server (Debian's busybox-static) serving
// /www on port 80, as an image of it would.
func BusyboxHTTPD(index string) (v1.Image, error) {
	return Program("/bin/busybox", map[string]string{"/www/index.html": index},
		"/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
}

// Redis is Debian's redis-server listening on its usual port, 6379, with
// protected mode off as in the official image.
func Redis() (v1.Image, error) {
	return Program("/usr/bin/redis-server", nil, "/usr/bin/redis-server", "--protected-mode", "no", "--save", "")
}
