package gitsync

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/shoal-run/shoal"
)

// evaluate judges head: history, signature, spec. A good head becomes the
// revision in force, is saved and emitted; a bad one is recorded.
func (s *Syncer) evaluate(head plumbing.Hash) error {
	hs := head.String()
	c, err := s.repo.CommitObject(head)
	if err != nil {
		return s.fail(ErrorRead, hs, fmt.Errorf("read commit: %w", err), nil)
	}
	cur := s.Current()
	if cur != nil && cur.Commit != hs {
		ok, err := s.descends(c, cur.Commit)
		if err != nil {
			return s.fail(ErrorRead, hs, err, nil)
		}
		if !ok {
			if s.cfg.RefuseNonFastForward {
				s.evaluated = head
				return s.fail(ErrorHistory, hs, fmt.Errorf("head does not descend from the current revision %s (force-push refused)", cur.Short()), nil)
			}
			s.log.Warn("FORCE-PUSH: following a new head that does not descend from the current revision",
				"head", short(hs), "current", cur.Short(), "branch", s.cfg.Branch)
		}
	}
	signer, err := s.policy.verify(c)
	if err != nil {
		s.evaluated = head
		return s.fail(ErrorVerify, hs, err, nil)
	}
	tree, err := c.Tree()
	if err != nil {
		return s.fail(ErrorRead, hs, fmt.Errorf("read tree: %w", err), nil)
	}
	loadStart := time.Now()
	tfs := newTreeFS(tree, c.Committer.When)
	spec, err := shoal.LoadSpec(tfs, s.cfg.Path)
	loadTook := time.Since(loadStart)
	if serr := tfs.storeError(); serr != nil {
		// Objects the tree names could not be read: the clone is damaged,
		// whatever the loader made of it.
		return s.fail(ErrorRead, hs, fmt.Errorf("read spec tree: %w", serr), nil)
	}
	if err != nil {
		var ve *shoal.ValidationError
		switch {
		case errors.As(err, &ve):
			s.evaluated = head
			return s.fail(ErrorValidate, hs, err, ve.Errors)
		case errors.Is(err, fs.ErrNotExist):
			s.evaluated = head
			return s.fail(ErrorValidate, hs, fmt.Errorf("spec path %q: %w", s.cfg.Path, err), nil)
		}
		return s.fail(ErrorRead, hs, err, nil)
	}
	rev := &shoal.Revision{
		Commit:   hs,
		Time:     c.Committer.When,
		Author:   c.Author.String(),
		Message:  strings.TrimSpace(c.Message),
		Signer:   signer,
		Spec:     spec,
		SpecHash: spec.Hash,
	}
	s.evaluated = head
	s.accept(rev, loadTook)
	return nil
}

// descends reports whether the commit named ancestor is reachable from c.
// When the clone lacks that commit: a clone made afresh by this process
// (after the old one was lost) shows that history was rewritten, so it is
// not reachable; an older clone should have it, so it is damaged (an error,
// which makes the caller clone again).
func (s *Syncer) descends(c *object.Commit, ancestor string) (bool, error) {
	a, err := s.repo.CommitObject(plumbing.NewHash(ancestor))
	if errors.Is(err, plumbing.ErrObjectNotFound) {
		if s.freshClone {
			return false, nil
		}
		return false, fmt.Errorf("current commit %s missing from the clone: %w", short(ancestor), err)
	}
	if err != nil {
		return false, fmt.Errorf("read current commit %s: %w", short(ancestor), err)
	}
	ok, err := a.IsAncestor(c)
	if err != nil {
		return false, fmt.Errorf("walk history from %s: %w", short(c.Hash.String()), err)
	}
	return ok, nil
}

// accept makes rev the revision in force, saves it and emits it.
func (s *Syncer) accept(rev *shoal.Revision, loadTook time.Duration) {
	err := saveState(s.cfg.DataDir, &savedState{
		Version: stateVersion, URL: s.cfg.URL, Branch: s.cfg.Branch, Path: s.cfg.Path,
		SavedAt: s.cfg.Now(), Revision: rev,
	})
	if err != nil {
		s.log.Error("cannot save the last good revision", "err", err)
	}
	s.mu.Lock()
	prev := s.current
	s.current = rev
	s.headErr = nil
	s.status.Commit = rev.Commit
	s.status.Restored = false
	s.status.Verified = rev.Signer != ""
	s.status.Signer = rev.Signer
	s.mu.Unlock()
	attrs := []any{"commit", rev.Short(), "author", rev.Author, "spec_hash", short(rev.SpecHash),
		"services", len(rev.Spec.Services), "jobs", len(rev.Spec.Jobs), "load_took", loadTook.Round(time.Microsecond)}
	if prev != nil {
		attrs = append(attrs, "previous", prev.Short())
	}
	if rev.Signer != "" {
		attrs = append(attrs, "signer", rev.Signer)
	}
	s.log.Info("new revision", attrs...)
	if s.cfg.OnRevision != nil {
		s.cfg.OnRevision(rev)
	}
}

// fail records err and returns it as a *SyncError. Repeats of the same
// error (same what and commit) keep their first time and count up.
func (s *Syncer) fail(what, commit string, err error, fields []shoal.FieldError) error {
	now := s.cfg.Now()
	s.mu.Lock()
	slot := &s.headErr
	if what == ErrorFetch {
		slot = &s.fetchErr
	}
	e := *slot
	if e == nil || e.What != what || e.Commit != commit {
		e = &SyncError{What: what, Commit: commit, Since: now}
		*slot = e
	}
	e.Message = err.Error()
	e.Fields = fields
	e.Attempts++
	n := e.Attempts
	cp := *e
	s.mu.Unlock()
	if n&(n-1) == 0 { // log the 1st, 2nd, 4th, 8th ... repeat
		s.log.Warn("sync failed; keeping the last good revision", "what", what, "commit", short(commit), "err", err, "attempts", n, "since", cp.Since)
	}
	return &cp
}
