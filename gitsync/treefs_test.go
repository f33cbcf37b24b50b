package gitsync_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/shoal-run/shoal/gitsync"
	"github.com/shoal-run/shoal/gitsync/gittest"
)

func TestOpenRevFS(t *testing.T) {
	r := gittest.New(t)
	first := r.Commit("first", map[string]string{
		"billing.yaml":        "name: billing\n",
		"apps/web/web.yaml":   "name: web\n",
		"apps/web/extra.json": "{}\n",
	})
	if err := os.Symlink("apps/web/web.yaml", filepath.Join(r.Work, "link.yaml")); err != nil {
		t.Fatal(err)
	}
	second := r.Commit("second", map[string]string{"billing.yaml": "name: billing\nreplicas: 5\n"})
	// Uncommitted work must be invisible.
	r.Write(map[string]string{"dirty.yaml": "name: dirty\n"})

	tests := []struct {
		rev        string
		wantCommit string
		files      map[string]string
		absent     []string
	}{
		{"main", second, map[string]string{"billing.yaml": "name: billing\nreplicas: 5\n", "link.yaml": "name: web\n"}, []string{"dirty.yaml"}},
		{"HEAD", second, map[string]string{"apps/web/web.yaml": "name: web\n"}, nil},
		{"HEAD~1", first, map[string]string{"billing.yaml": "name: billing\n"}, []string{"link.yaml"}},
		{first, first, map[string]string{"apps/web/extra.json": "{}\n"}, nil},
		{first[:10], first, nil, nil},
	}
	for _, tc := range tests {
		t.Run(tc.rev, func(t *testing.T) {
			// Open from a subdirectory: the repository is found upwards.
			fsys, commit, err := gitsync.OpenRevFS(filepath.Join(r.Work, "apps", "web"), tc.rev)
			if err != nil {
				t.Fatal(err)
			}
			if commit != tc.wantCommit {
				t.Fatalf("commit = %s, want %s", commit, tc.wantCommit)
			}
			for name, want := range tc.files {
				got, err := fs.ReadFile(fsys, name)
				if err != nil {
					t.Fatalf("read %s: %v", name, err)
				}
				if string(got) != want {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			for _, name := range tc.absent {
				if _, err := fs.Stat(fsys, name); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("stat %s: err = %v, want not exist", name, err)
				}
			}
		})
	}

	fsys, _, err := gitsync.OpenRevFS(r.Work, "main")
	if err != nil {
		t.Fatal(err)
	}
	// fstest.TestFS checks Open, ReadDir, Stat, ReadFile and their agreement.
	if err := fstest.TestFS(fsys, "billing.yaml", "apps/web/web.yaml", "apps/web/extra.json", "link.yaml"); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Open("../x"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("open ../x: err = %v, want invalid", err)
	}
	var walked []string
	if err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			walked = append(walked, p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"apps/web/extra.json", "apps/web/web.yaml", "billing.yaml", "link.yaml"}
	if len(walked) != len(want) {
		t.Fatalf("walked %v, want %v", walked, want)
	}
	for i := range want {
		if walked[i] != want[i] {
			t.Fatalf("walked %v, want %v", walked, want)
		}
	}

	if err := os.Symlink("../../etc/passwd", filepath.Join(r.Work, "apps", "escape.yaml")); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"alias":   "apps/web",        // a directory link
		"loop1":   "loop2/x",         // a loop through a directory
		"loop2":   "loop1",           //
		"self":    "self",            // a link to itself
		"apps/up": "../billing.yaml", // a relative link upwards, inside the tree
	} {
		if err := os.Symlink(target, filepath.Join(r.Work, filepath.FromSlash(link))); err != nil {
			t.Fatal(err)
		}
	}
	r.Commit("links", nil)
	fsys, _, err = gitsync.OpenRevFS(r.Work, "main")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.ReadFile(fsys, "apps/escape.yaml"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("symlink out of the tree: err = %v, want not exist", err)
	}
	if b, err := fs.ReadFile(fsys, "alias/web.yaml"); err != nil || string(b) != "name: web\n" {
		t.Errorf("through a directory link: %q, %v", b, err)
	}
	if b, err := fs.ReadFile(fsys, "apps/up"); err != nil || !strings.HasPrefix(string(b), "name: billing") {
		t.Errorf("upward link: %q, %v", b, err)
	}
	for _, name := range []string{"loop1", "loop2/x", "self", "self/x"} {
		if _, err := fs.ReadFile(fsys, name); err == nil {
			t.Errorf("%s: read through a link loop", name)
		}
	}
	if ents, err := fs.ReadDir(fsys, "alias"); err != nil || len(ents) != 2 {
		t.Errorf("readdir through a link: %v, %v", ents, err)
	}

	// A bare repository opens too.
	if _, commit, err := gitsync.OpenRevFS(r.Bare, "main"); err != nil || commit != r.Head() {
		t.Errorf("bare: %s, %v; want %s", commit, err, r.Head())
	}

	if _, _, err := gitsync.OpenRevFS(r.Work, "nope"); err == nil {
		t.Error("unknown revision: no error")
	}
	if _, _, err := gitsync.OpenRevFS(t.TempDir(), "HEAD"); err == nil {
		t.Error("not a repository: no error")
	}
}
