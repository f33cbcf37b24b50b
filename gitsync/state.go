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
