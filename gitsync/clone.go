package gitsync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// openRepo opens the bare clone in the data directory, or makes an empty
// one with the configured remote. It does no network I/O. Pack files stay
// open between reads (a bounded number of them), which makes reading a
// large spec tree several times faster.
func (s *Syncer) openRepo() error {
	if s.repo != nil {
		return nil
	}
	open := func() (*git.Repository, *filesystem.Storage, error) {
		st := filesystem.NewStorageWithOptions(osfs.New(s.repoDir), cache.NewObjectLRUDefault(),
			filesystem.Options{MaxOpenDescriptors: maxOpenPacks})
		repo, err := git.Open(st, nil)
		if err != nil {
			st.Close()
			return nil, nil, err
		}
		return repo, st, nil
	}
	initRepo := func() (*git.Repository, *filesystem.Storage, error) {
		if err := os.MkdirAll(s.repoDir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("init %s: %w", s.repoDir, err)
		}
		st := filesystem.NewStorageWithOptions(osfs.New(s.repoDir), cache.NewObjectLRUDefault(),
			filesystem.Options{MaxOpenDescriptors: maxOpenPacks})
		repo, err := git.Init(st, nil)
		if err != nil {
			st.Close()
			return nil, nil, fmt.Errorf("init %s: %w", s.repoDir, err)
		}
		return repo, st, nil
	}
	repo, st, err := open()
	s.freshClone = err != nil
	switch {
	case errors.Is(err, git.ErrRepositoryNotExists):
		repo, st, err = initRepo()
	case err != nil:
		s.log.Warn("cannot open the local clone; starting a new one", "dir", s.repoDir, "err", err)
		if err := os.RemoveAll(s.repoDir); err != nil {
			return fmt.Errorf("remove damaged clone: %w", err)
		}
		repo, st, err = initRepo()
	}
	if err != nil {
		return err
	}
	if err := s.configureRemote(repo); err != nil {
		st.Close()
		return err
	}
	s.repo, s.store = repo, st
	return nil
}

// closeRepo releases the clone's open files.
func (s *Syncer) closeRepo() {
	if s.store != nil {
		if err := s.store.Close(); err != nil {
			s.log.Debug("close clone storage", "err", err)
		}
	}
	s.repo, s.store = nil, nil
}

func (s *Syncer) configureRemote(repo *git.Repository) error {
	r, err := repo.Remote(git.DefaultRemoteName)
	switch {
	case err == nil:
		if urls := r.Config().URLs; len(urls) == 1 && urls[0] == s.cfg.URL {
			return nil
		}
		if err := repo.DeleteRemote(git.DefaultRemoteName); err != nil {
			return fmt.Errorf("configure remote: %w", err)
		}
	case !errors.Is(err, git.ErrRemoteNotFound):
		return fmt.Errorf("configure remote: %w", err)
	}
	if _, err := repo.CreateRemote(remoteConfig([]string{s.cfg.URL})); err != nil {
		return fmt.Errorf("configure remote: %w", err)
	}
	return nil
}

// dropRepo forgets the clone and removes it, so the next round clones
// afresh. The last good revision stays in force.
func (s *Syncer) dropRepo() {
	s.closeRepo()
	s.fetchOnly = 0
	if err := os.RemoveAll(s.repoDir); err != nil {
		s.log.Error("cannot remove the local clone", "dir", s.repoDir, "err", err)
	}
}

// remote is the configured remote as go-git reaches it.
func (s *Syncer) remote() (*git.Remote, error) {
	return git.NewRemote(s.repo.Storer, remoteConfig([]string{s.fetchURL})), nil
}

// remoteHead asks the remote for its branch head: one small request. It
// tells a remote that is down from one that answers.
func (s *Syncer) remoteHead(ctx context.Context) (plumbing.Hash, error) {
	r, err := s.remote()
	if err != nil {
		return plumbing.ZeroHash, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.FetchTimeout)
	defer cancel()
	refs, err := r.ListContext(ctx, &git.ListOptions{Auth: s.auth})
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("list %s: %w", redactURL(s.cfg.URL), err)
	}
	want := plumbing.NewBranchReferenceName(s.cfg.Branch)
	for _, ref := range refs {
		if ref.Name() == want {
			return ref.Hash(), nil
		}
	}
	return plumbing.ZeroHash, fmt.Errorf("list %s: branch %s not found", redactURL(s.cfg.URL), s.cfg.Branch)
}

// fetch brings the branch and its history into the clone. The first fetch
// into an empty clone logs its progress.
func (s *Syncer) fetch(ctx context.Context) error {
	r, err := s.remote()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.FetchTimeout)
	defer cancel()
	opts := &git.FetchOptions{
		RefSpecs: []config.RefSpec{refSpec(s.cfg.Branch)},
		Auth:     s.auth,
		Tags:     git.NoTags,
		Force:    true,
	}
	first := false
	if _, err := s.repo.Reference(s.ref, false); err != nil {
		first = true
		opts.Progress = newProgressLog(s.log, "cloning", s.cfg.Now)
		s.log.Info("cloning spec repository", "url", redactURL(s.cfg.URL), "branch", s.cfg.Branch, "dir", s.repoDir)
	}
	start := time.Now()
	err = r.FetchContext(ctx, opts)
	if errors.Is(err, git.NoErrAlreadyUpToDate) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", redactURL(s.cfg.URL), err)
	}
	if first {
		s.log.Info("cloned spec repository", "url", redactURL(s.cfg.URL), "took", time.Since(start).Round(time.Millisecond))
	} else {
		s.log.Debug("fetched", "took", time.Since(start).Round(time.Microsecond))
	}
	return nil
}

func (s *Syncer) hasCommit(h plumbing.Hash) bool {
	return !h.IsZero() && s.repo.Storer.HasEncodedObject(h) == nil
}

// fetchOK records a successful round trip to the remote.
func (s *Syncer) fetchOK(head plumbing.Hash) {
	s.fetchFailures, s.fetchOnly = 0, 0
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fetchErr != nil {
		s.log.Info("remote reachable again", "url", redactURL(s.cfg.URL), "down_since", s.fetchErr.Since)
		s.fetchErr = nil
	}
	s.status.LastFetch = s.status.LastAttempt
	s.status.Head = head.String()
	if s.current != nil && s.current.Commit == head.String() {
		s.status.Restored = false
	}
}
