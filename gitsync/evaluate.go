package gitsync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/shoal-run/shoal"
)

// evaluate judges head: history, signature, spec. A good head becomes the
// revision in force, is emitted and then saved; a bad one is recorded.
func (s *Syncer) evaluate(ctx context.Context, head plumbing.Hash) error {
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
			if s.refuseNonFastForward() {
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
	// From here on the head is under trial: should this process die
	// evaluating or applying it, the next one refuses it (restoreRefused).
	if err := savePending(s.cfg.DataDir, pendingState{Commit: hs, Started: s.cfg.Now()}); err != nil {
		s.log.Error("cannot record the head under trial", "commit", short(hs), "err", err)
	}
	loadStart := time.Now()
	resp, err := s.loadSpec(ctx, c)
	loadTook := time.Since(loadStart)
	if err != nil {
		s.clearPending()
		var crash *evalCrash
		switch {
		case ctx.Err() != nil:
			return err
		case errors.As(err, &crash):
			s.evaluated = head
			s.refused[head] = refusedHead{Commit: hs, Message: crash.msg, At: s.cfg.Now()}
			if err := addRefused(s.cfg.DataDir, s.refused[head]); err != nil {
				s.log.Error("cannot remember a refused head", "commit", short(hs), "err", err)
			}
			return s.fail(ErrorEvaluate, hs, err, nil)
		}
		// The evaluator could not be run: not the head's fault, so it is
		// tried again next round.
		return s.fail(ErrorEvaluate, hs, err, nil)
	}
	switch {
	case resp.StoreErr != "":
		// Objects the tree names could not be read: the clone is damaged,
		// whatever the loader made of it.
		s.clearPending()
		return s.fail(ErrorRead, hs, fmt.Errorf("read spec tree: %s", resp.StoreErr), nil)
	case resp.Invalid != nil:
		s.clearPending()
		s.evaluated = head
		return s.fail(ErrorValidate, hs, resp.Invalid, resp.Invalid.Errors)
	case resp.NotExist != "":
		s.clearPending()
		s.evaluated = head
		return s.fail(ErrorValidate, hs, fmt.Errorf("spec path %q: %s", s.cfg.Path, resp.NotExist), nil)
	case resp.Err != "" || resp.Spec == nil:
		s.clearPending()
		return s.fail(ErrorRead, hs, fmt.Errorf("load spec: %s", resp.Err), nil)
	}
	spec := resp.Spec
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

// refuseNonFastForward says whether a head that does not descend from the
// revision in force is refused: by default under a signature policy, since
// anyone who can push could otherwise roll the fleet back to an older
// signed commit.
func (s *Syncer) refuseNonFastForward() bool {
	if s.cfg.RefuseNonFastForward {
		return true
	}
	return s.policy.enabled() && !s.cfg.AllowNonFastForward
}

// loadSpec evaluates the spec tree of c, in a child process when
// Config.EvalCommand is set, in this one otherwise.
func (s *Syncer) loadSpec(ctx context.Context, c *object.Commit) (evalResponse, error) {
	if len(s.cfg.EvalCommand) > 0 {
		return s.evaluateInChild(ctx, c.Hash.String())
	}
	tree, err := c.Tree()
	if err != nil {
		return evalResponse{StoreErr: fmt.Sprintf("read tree: %v", err)}, nil
	}
	tfs := newTreeFS(tree, c.Committer.When)
	spec, err := shoal.LoadSpec(tfs, s.cfg.Path)
	return specResponse(spec, err, tfs.storeError()), nil
}

func (s *Syncer) clearPending() {
	if err := clearPending(s.cfg.DataDir); err != nil {
		s.log.Error("cannot clear the head under trial", "err", err)
	}
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

// accept makes rev the revision in force, emits it, and only then saves
// it as the last good revision and ends its trial: a revision that brings
// the process down while it is handed over is refused at the next start
// rather than restored into a crash loop.
func (s *Syncer) accept(rev *shoal.Revision, loadTook time.Duration) {
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
	err := saveState(s.cfg.DataDir, &savedState{
		Version: stateVersion, URL: s.cfg.URL, Branch: s.cfg.Branch, Path: s.cfg.Path,
		SavedAt: s.cfg.Now(), Revision: rev,
	})
	if err != nil {
		s.log.Error("cannot save the last good revision", "err", err)
	}
	s.clearPending()
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
