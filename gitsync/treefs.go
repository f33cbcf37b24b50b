package gitsync

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// maxSymlinkHops bounds how many symbolic links Open follows for one name.
const maxSymlinkHops = 8

// OpenRevFS opens the local Git repository that contains repoDir (walking up
// to the enclosing .git like git does; repoDir may also be a bare
// repository), resolves rev (a branch, tag, hash or
// an expression such as HEAD~1) and returns the tree of that commit as a
// read-only fs.FS together with the full commit hash. No worktree is read:
// uncommitted changes are invisible.
func OpenRevFS(repoDir, rev string) (fs.FS, string, error) {
	repo, err := git.PlainOpenWithOptions(repoDir, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if errors.Is(err, git.ErrRepositoryNotExists) {
		repo, err = git.PlainOpen(repoDir) // a bare repository
	}
	if err != nil {
		return nil, "", fmt.Errorf("open git repository at %s: %w", repoDir, err)
	}
	if rev == "" {
		rev = "HEAD"
	}
	h, err := repo.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		return nil, "", fmt.Errorf("resolve revision %q in %s: %w", rev, repoDir, err)
	}
	c, err := repo.CommitObject(*h)
	if err != nil {
		return nil, "", fmt.Errorf("read commit %s: %w", h, err)
	}
	t, err := c.Tree()
	if err != nil {
		return nil, "", fmt.Errorf("read tree of commit %s: %w", h, err)
	}
	return newTreeFS(t, c.Committer.When), c.Hash.String(), nil
}

// TreeFS returns a read-only fs.FS over a Git tree, reading blobs straight
// from the object store. It implements fs.ReadDirFS, fs.ReadFileFS and
// fs.StatFS, is safe for concurrent use, and follows symbolic links that
// stay inside the tree. Modification times are zero.
func TreeFS(t *object.Tree) fs.FS { return newTreeFS(t, time.Time{}) }

type treeFS struct {
	mu      sync.Mutex // object.Tree caches subtrees without locking
	root    *object.Tree
	trees   map[string]*object.Tree // resolved directory path → tree
	modTime time.Time
	// ioErr is the first failure to read an object that the tree names:
	// the store is damaged, which callers must not mistake for a bad file.
	ioErr error
}

// storeError returns the first object read failure seen, if any.
func (fsys *treeFS) storeError() error {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	return fsys.ioErr
}

func (fsys *treeFS) noteIOErr(err error) error {
	if err != nil && fsys.ioErr == nil {
		fsys.ioErr = err
	}
	return err
}

var (
	_ fs.ReadDirFS  = (*treeFS)(nil)
	_ fs.ReadFileFS = (*treeFS)(nil)
	_ fs.StatFS     = (*treeFS)(nil)
)

func newTreeFS(t *object.Tree, modTime time.Time) *treeFS {
	return &treeFS{root: t, modTime: modTime}
}

// node is a resolved name: the root (entry nil) or a tree entry.
type node struct {
	name  string // cleaned path inside the tree, "." for the root
	entry *object.TreeEntry
}

func (n node) isDir() bool { return n.entry == nil || n.entry.Mode == filemode.Dir }

// lookup resolves name, following symbolic links when follow is set.
// Callers hold fsys.mu.
func (fsys *treeFS) lookup(op, name string, follow bool) (node, error) {
	if !fs.ValidPath(name) {
		return node{}, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	hops := 0
	n, err := fsys.resolve(name, follow, &hops)
	if err != nil {
		return node{}, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return n, nil
}

// resolve finds the entry for a valid path, following symbolic links in
// its directories, and in its last element when follow is set. hops counts
// the links followed for the whole lookup, so that loops end.
func (fsys *treeFS) resolve(name string, follow bool, hops *int) (node, error) {
	for {
		if name == "." {
			return node{name: "."}, nil
		}
		parent := "."
		if dir, _ := path.Split(name); dir != "" {
			d, err := fsys.resolve(strings.TrimSuffix(dir, "/"), true, hops)
			if err != nil {
				return node{}, err
			}
			if !d.isDir() {
				return node{}, fs.ErrNotExist
			}
			parent = d.name
		}
		t, err := fsys.treeAt(parent)
		if err != nil {
			return node{}, err
		}
		base := path.Base(name)
		e := findEntry(t, base)
		if e == nil {
			return node{}, fs.ErrNotExist
		}
		full := path.Join(parent, base)
		if e.Mode != filemode.Symlink || !follow {
			return node{name: full, entry: e}, nil
		}
		if *hops++; *hops > maxSymlinkHops {
			return node{}, errors.New("too many levels of symbolic links")
		}
		target, err := fsys.readBlob(e)
		if err != nil {
			return node{}, err
		}
		t2 := string(target)
		next := path.Join(parent, t2)
		if path.IsAbs(t2) || next == ".." || strings.HasPrefix(next, "../") {
			return node{}, fmt.Errorf("symbolic link to %s leaves the tree: %w", t2, fs.ErrNotExist)
		}
		name = next
	}
}

func findEntry(t *object.Tree, name string) *object.TreeEntry {
	for i := range t.Entries {
		if t.Entries[i].Name == name {
			return &t.Entries[i]
		}
	}
	return nil
}

// treeAt returns the tree of a resolved directory path, cached. Callers
// hold fsys.mu.
func (fsys *treeFS) treeAt(dir string) (*object.Tree, error) {
	if dir == "." {
		return fsys.root, nil
	}
	if t, ok := fsys.trees[dir]; ok {
		return t, nil
	}
	parent, err := fsys.treeAt(path.Dir(dir))
	if err != nil {
		return nil, err
	}
	t, err := parent.Tree(path.Base(dir))
	if err != nil {
		return nil, fsys.noteIOErr(fmt.Errorf("read tree %s: %w", dir, err))
	}
	if fsys.trees == nil {
		fsys.trees = make(map[string]*object.Tree)
	}
	fsys.trees[dir] = t
	return t, nil
}

func (fsys *treeFS) readBlob(e *object.TreeEntry) ([]byte, error) {
	f, err := fsys.root.TreeEntryFile(e)
	if err != nil {
		return nil, fsys.noteIOErr(fmt.Errorf("read blob %s: %w", e.Hash, err))
	}
	r, err := f.Reader()
	if err != nil {
		return nil, fsys.noteIOErr(fmt.Errorf("read blob %s: %w", e.Hash, err))
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fsys.noteIOErr(fmt.Errorf("read blob %s: %w", e.Hash, err))
	}
	return data, nil
}

func (fsys *treeFS) subtree(n node) (*object.Tree, error) { return fsys.treeAt(n.name) }

func (fsys *treeFS) info(n node) (*fileInfo, error) {
	fi := &fileInfo{name: path.Base(n.name), modTime: fsys.modTime}
	if n.entry == nil {
		fi.mode = fs.ModeDir | 0o555
		return fi, nil
	}
	var err error
	fi.mode, err = entryMode(n.entry.Mode)
	if err != nil {
		return nil, err
	}
	if !fi.mode.IsDir() && n.entry.Mode != filemode.Submodule {
		parent, err := fsys.treeAt(path.Dir(n.name))
		if err != nil {
			return nil, err
		}
		fi.size, err = parent.Size(path.Base(n.name))
		if err != nil {
			return nil, fsys.noteIOErr(fmt.Errorf("size of %s: %w", n.name, err))
		}
	}
	return fi, nil
}

func entryMode(m filemode.FileMode) (fs.FileMode, error) {
	switch m {
	case filemode.Dir:
		return fs.ModeDir | 0o555, nil
	case filemode.Regular, filemode.Deprecated:
		return 0o444, nil
	case filemode.Executable:
		return 0o555, nil
	case filemode.Symlink:
		return fs.ModeSymlink | 0o777, nil
	case filemode.Submodule:
		return fs.ModeIrregular | 0o555, nil
	}
	return 0, fmt.Errorf("unknown git file mode %s", m)
}

// Open implements fs.FS.
func (fsys *treeFS) Open(name string) (fs.File, error) {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	n, err := fsys.lookup("open", name, true)
	if err != nil {
		return nil, err
	}
	fi, err := fsys.info(n)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if n.isDir() {
		entries, err := fsys.readDir(n)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &dirFile{info: fi, entries: entries}, nil
	}
	if n.entry.Mode == filemode.Submodule {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("submodule: %w", fs.ErrNotExist)}
	}
	data, err := fsys.readBlob(n.entry)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &blobFile{info: fi, data: data}, nil
}

// ReadFile implements fs.ReadFileFS.
func (fsys *treeFS) ReadFile(name string) ([]byte, error) {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	n, err := fsys.lookup("readfile", name, true)
	if err != nil {
		return nil, err
	}
	if n.isDir() || n.entry.Mode == filemode.Submodule {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: errors.New("is a directory")}
	}
	data, err := fsys.readBlob(n.entry)
	if err != nil {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: err}
	}
	return data, nil
}

// Stat implements fs.StatFS.
func (fsys *treeFS) Stat(name string) (fs.FileInfo, error) {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	n, err := fsys.lookup("stat", name, true)
	if err != nil {
		return nil, err
	}
	fi, err := fsys.info(n)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return fi, nil
}

// ReadDir implements fs.ReadDirFS; entries are sorted by name.
func (fsys *treeFS) ReadDir(name string) ([]fs.DirEntry, error) {
	fsys.mu.Lock()
	defer fsys.mu.Unlock()
	n, err := fsys.lookup("readdir", name, true)
	if err != nil {
		return nil, err
	}
	if !n.isDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errors.New("not a directory")}
	}
	entries, err := fsys.readDir(n)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	return entries, nil
}

// readDir lists a directory, sorted by name. Entry infos (which need the
// blob sizes) are computed only when asked for. Callers hold fsys.mu.
func (fsys *treeFS) readDir(n node) ([]fs.DirEntry, error) {
	t, err := fsys.subtree(n)
	if err != nil {
		return nil, err
	}
	out := make([]fs.DirEntry, 0, len(t.Entries))
	for _, e := range t.Entries {
		mode, err := entryMode(e.Mode)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path.Join(n.name, e.Name), err)
		}
		out = append(out, &dirEntry{fsys: fsys, full: path.Join(n.name, e.Name), entry: e, mode: mode})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

type dirEntry struct {
	fsys  *treeFS
	full  string
	entry object.TreeEntry
	mode  fs.FileMode
}

func (d *dirEntry) Name() string      { return d.entry.Name }
func (d *dirEntry) IsDir() bool       { return d.mode.IsDir() }
func (d *dirEntry) Type() fs.FileMode { return d.mode.Type() }
func (d *dirEntry) String() string    { return fs.FormatDirEntry(d) }

func (d *dirEntry) Info() (fs.FileInfo, error) {
	d.fsys.mu.Lock()
	defer d.fsys.mu.Unlock()
	e := d.entry
	fi, err := d.fsys.info(node{name: d.full, entry: &e})
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: d.full, Err: err}
	}
	return fi, nil
}

type fileInfo struct {
	name    string
	size    int64
	mode    fs.FileMode
	modTime time.Time
}

func (fi *fileInfo) Name() string       { return fi.name }
func (fi *fileInfo) Size() int64        { return fi.size }
func (fi *fileInfo) Mode() fs.FileMode  { return fi.mode }
func (fi *fileInfo) ModTime() time.Time { return fi.modTime }
func (fi *fileInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi *fileInfo) Sys() any           { return nil }

// blobFile is an open file; its content was read on Open.
type blobFile struct {
	info *fileInfo
	data []byte
	off  int64
}

func (f *blobFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *blobFile) Close() error               { return nil }

func (f *blobFile) Read(p []byte) (int, error) {
	if f.off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[f.off:])
	f.off += int64(n)
	return n, nil
}

func (f *blobFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *blobFile) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += f.off
	case io.SeekEnd:
		offset += int64(len(f.data))
	default:
		return 0, errors.New("invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("negative position")
	}
	f.off = offset
	return offset, nil
}

// dirFile is an open directory.
type dirFile struct {
	info    *fileInfo
	entries []fs.DirEntry
	off     int
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return d.info, nil }
func (d *dirFile) Close() error               { return nil }
func (d *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.name, Err: errors.New("is a directory")}
}

func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	if n > len(rest) {
		n = len(rest)
	}
	d.off += n
	return rest[:n], nil
}
