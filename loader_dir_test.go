package shoal_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/shoal-run/shoal"
)

const okService = "name: web\nimage: example/web:1\n"

// TestLoadDirRefusesIrregularFiles: a local tree (as CI reads a pull
// request) yields only its own regular files. Links out of the tree,
// devices and FIFOs are errors naming the file, the FIFO does not hang,
// and the content of a link's target is never printed.
func TestLoadDirRefusesIrregularFiles(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.yaml")
	if err := os.WriteFile(secret, []byte("name: TOPSECRETVALUE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T, path string)
		want string
	}{
		{"link-out", func(t *testing.T, p string) { symlink(t, secret, p) }, "escapes"},
		{"link-relative-out", func(t *testing.T, p string) { symlink(t, "../../"+filepath.Base(outside)+"/secret.yaml", p) }, "escapes"},
		{"link-dev-zero", func(t *testing.T, p string) { symlink(t, "/dev/zero", p) }, "escapes"},
		{"fifo", func(t *testing.T, p string) {
			if err := syscall.Mkfifo(p, 0o600); err != nil {
				t.Skipf("mkfifo: %v", err)
			}
		}, "not a regular file"},
		{"char-device", func(t *testing.T, p string) {
			if err := syscall.Mknod(p, syscall.S_IFCHR|0o600, 1<<8|5); err != nil { // /dev/zero's numbers
				t.Skipf("mknod (needs root): %v", err)
			}
		}, "not a regular file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "ok.yaml"), []byte(okService), 0o644); err != nil {
				t.Fatal(err)
			}
			bad := filepath.Join(dir, "bad.yaml")
			tc.make(t, bad)
			_, err := shoal.LoadDir(dir)
			var verr *shoal.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("want a validation error, got %v", err)
			}
			if len(verr.Errors) != 1 || verr.Errors[0].File != bad || !strings.Contains(verr.Errors[0].Message, tc.want) {
				t.Fatalf("want one error on %s saying %q, got:\n%v", bad, tc.want, err)
			}
			if strings.Contains(err.Error(), "TOPSECRETVALUE") {
				t.Fatalf("the error prints the link target's content:\n%v", err)
			}
		})
	}
}

// TestLoadDirFollowsLinksInside: a link that stays in the tree still works.
func TestLoadDirFollowsLinksInside(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "real"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "real", "web.txt"), []byte(okService), 0o644); err != nil {
		t.Fatal(err)
	}
	symlink(t, "real/web.txt", filepath.Join(dir, "web.yaml"))
	spec, err := shoal.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Services) != 1 {
		t.Fatalf("want 1 service, got %d", len(spec.Services))
	}
}

// TestLoadDirSizeLimits: a file larger than the limit is refused without
// being read whole, and so is a tree whose files add up past its limit.
func TestLoadDirSizeLimits(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(okService+"# "+strings.Repeat("x", 2<<20)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := shoal.LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "larger than the 1048576-byte limit") {
		t.Fatalf("want the file size limit, got %v", err)
	}

	dir = t.TempDir()
	pad := "# " + strings.Repeat("x", 900<<10) + "\n"
	for i := range 20 {
		name := filepath.Join(dir, "s"+string(rune('a'+i))+".yaml")
		if err := os.WriteFile(name, []byte("name: s"+string(rune('a'+i))+"\nimage: x/y:1\n"+pad), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, err = shoal.LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "limit for a tree") {
		t.Fatalf("want the tree size limit, got %v", err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
