package gitsync

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-run/shoal"
)

const (
	lastGoodFile  = "last-good.json"
	stateVersion  = 1
	repoDirName   = "repo.git"
	stateFileMode = 0o600
)

// savedState is what DataDir/last-good.json holds: the last revision that
// was verified and valid, spec included, so that it restores even when the
// clone is gone, and the source it came from.
type savedState struct {
	Version  int             `json:"version"`
	URL      string          `json:"url"`
	Branch   string          `json:"branch"`
	Path     string          `json:"path"`
	SavedAt  time.Time       `json:"saved_at"`
	Revision *shoal.Revision `json:"revision"`
}

// saveState writes st to dir/last-good.json atomically: a synced temporary
// file renamed over the old one, then the directory synced.
func saveState(dir string, st *savedState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("save last good revision: %w", err)
	}
	f, err := os.CreateTemp(dir, lastGoodFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("save last good revision: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("save last good revision: %w", err)
	}
	if err := f.Chmod(stateFileMode); err != nil {
		f.Close()
		return fmt.Errorf("save last good revision: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save last good revision: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save last good revision: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, lastGoodFile)); err != nil {
		return fmt.Errorf("save last good revision: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: the rename is done
		d.Close()
	}
	return nil
}

// loadState reads dir/last-good.json; it returns nil, nil when there is none.
func loadState(dir string) (*savedState, error) {
	data, err := os.ReadFile(filepath.Join(dir, lastGoodFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load last good revision: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("load last good revision from %s: %w", filepath.Join(dir, lastGoodFile), err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("load last good revision: unknown version %d", st.Version)
	}
	if st.Revision == nil || st.Revision.Spec == nil || st.Revision.Commit == "" {
		return nil, fmt.Errorf("load last good revision from %s: incomplete", filepath.Join(dir, lastGoodFile))
	}
	return &st, nil
}

// Files of a head under trial. pending.json names the head being
// evaluated or handed to the caller, written before either starts and
// removed once the head is judged and, when good, saved as the last good
// revision. Found at start, it means the previous process died on that
// head (an evaluator crash, the out-of-memory killer, a crash while
// applying): the head goes to refused.json and is never tried again, so a
// spec cannot crash-loop an agent.
const (
	pendingFile = "pending.json"
	refusedFile = "refused.json"
	// maxRefused bounds the refused heads remembered; the oldest go first.
	maxRefused = 64
)

type pendingState struct {
	Commit  string    `json:"commit"`
	Started time.Time `json:"started"`
}

// refusedHead is a head refused because evaluating or applying it did
// not finish.
type refusedHead struct {
	Commit  string    `json:"commit"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

type refusedState struct {
	Version int           `json:"version"`
	Heads   []refusedHead `json:"heads"`
}

// writeFileAtomic writes data to dir/name through a synced temporary file.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(stateFileMode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: the rename is done
		d.Close()
	}
	return nil
}

func savePending(dir string, p pendingState) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, pendingFile, append(data, '\n')); err != nil {
		return fmt.Errorf("save pending head: %w", err)
	}
	return nil
}

func clearPending(dir string) error {
	if err := os.Remove(filepath.Join(dir, pendingFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear pending head: %w", err)
	}
	return nil
}

// loadPending returns the head under trial when the last process stopped,
// or nil.
func loadPending(dir string) (*pendingState, error) {
	data, err := os.ReadFile(filepath.Join(dir, pendingFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load pending head: %w", err)
	}
	var p pendingState
	if err := json.Unmarshal(data, &p); err != nil || len(p.Commit) != 40 || !isHex(p.Commit) {
		return nil, fmt.Errorf("load pending head from %s: unreadable", filepath.Join(dir, pendingFile))
	}
	return &p, nil
}

func loadRefused(dir string) ([]refusedHead, error) {
	data, err := os.ReadFile(filepath.Join(dir, refusedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load refused heads: %w", err)
	}
	var st refusedState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("load refused heads from %s: %w", filepath.Join(dir, refusedFile), err)
	}
	return st.Heads, nil
}

// addRefused appends h to dir/refused.json, keeping the newest maxRefused.
func addRefused(dir string, h refusedHead) error {
	heads, err := loadRefused(dir)
	if err != nil {
		heads = nil // an unreadable list is replaced rather than kept broken
	}
	heads = append(heads, h)
	if len(heads) > maxRefused {
		heads = heads[len(heads)-maxRefused:]
	}
	data, err := json.MarshalIndent(refusedState{Version: stateVersion, Heads: heads}, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(dir, refusedFile, append(data, '\n')); err != nil {
		return fmt.Errorf("save refused head: %w", err)
	}
	return nil
}
