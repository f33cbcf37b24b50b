package gitsync

import (
	"bytes"
	"io/fs"
	"sort"
	"strings"
	"testing"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/storage/memory"
)

// FuzzTreeFS builds a tree from fuzzed entries (a file, a directory and a
// symbolic link with a fuzzed name and target) and reads it through
// TreeFS: no panic, no link followed out of the tree, and any content
// read is the one blob the tree holds.
func FuzzTreeFS(f *testing.F) {
	for _, seed := range [][3]string{
		{"link.yaml", "d/f.yaml", "link.yaml"},
		{"up", "../../etc/passwd", "up"},
		{"abs", "/etc/passwd", "abs"},
		{"loop", "loop", "loop/x"},
		{"dl", "d", "dl/f.yaml"},
		{"x", "d/../d/./f.yaml", "x"},
		{"y", "d/../../d/f.yaml", "d/../y"},
	} {
		f.Add(seed[0], seed[1], seed[2], []byte("name: web\n"))
	}
	f.Fuzz(func(t *testing.T, linkName, target, query string, data []byte) {
		if linkName == "" || linkName == "d" || strings.ContainsAny(linkName, "/\x00") || linkName == "." || linkName == ".." {
			return
		}
		st := memory.NewStorage()
		blob := func(b []byte) plumbing.Hash {
			o := st.NewEncodedObject()
			o.SetType(plumbing.BlobObject)
			w, _ := o.Writer()
			w.Write(b) //nolint:errcheck // in memory
			w.Close()
			h, err := st.SetEncodedObject(o)
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		tree := func(entries []object.TreeEntry) *object.Tree {
			sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
			tr := &object.Tree{Entries: entries}
			o := st.NewEncodedObject()
			if err := tr.Encode(o); err != nil {
				t.Skip(err) // names git cannot order (like "d-" beside dir "d")
			}
			h, err := st.SetEncodedObject(o)
			if err != nil {
				t.Fatal(err)
			}
			got, err := object.GetTree(st, h)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		sub := tree([]object.TreeEntry{{Name: "f.yaml", Mode: filemode.Regular, Hash: blob(data)}})
		root := tree([]object.TreeEntry{
			{Name: "d", Mode: filemode.Dir, Hash: sub.Hash},
			{Name: linkName, Mode: filemode.Symlink, Hash: blob([]byte(target))},
		})
		fsys := TreeFS(root)
		for _, name := range []string{query, linkName, "d/f.yaml", "."} {
			if b, err := fs.ReadFile(fsys, name); err == nil && !bytes.Equal(b, data) {
				t.Fatalf("ReadFile(%q) = %q, want the tree's only blob %q", name, b, data)
			}
			if _, err := fs.Stat(fsys, name); err == nil && !fs.ValidPath(name) {
				t.Fatalf("Stat(%q) succeeded on an invalid path", name)
			}
			fs.ReadDir(fsys, name) //nolint:errcheck // must not panic
		}
		fs.WalkDir(fsys, ".", func(string, fs.DirEntry, error) error { return nil }) //nolint:errcheck // must not panic
		if strings.HasPrefix(target, "/") || strings.HasPrefix(target, "../") {
			if _, err := fs.ReadFile(fsys, linkName); err == nil {
				t.Fatalf("link %q to %q was followed out of the tree", linkName, target)
			}
		}
	})
}
