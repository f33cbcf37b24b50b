package gitsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/shoal-run/shoal"
)

// refetchAfter is how many failed fetches in a row, with the remote
// answering, make the syncer suspect its clone and re-clone.
const refetchAfter = 3

// maxAnnounced bounds the announced commits awaited at once, so that a
// chatty or hostile peer cannot grow the set without limit.
const maxAnnounced = 64

// maxOpenPacks bounds the pack files of the clone kept open between reads.
const maxOpenPacks = 16

// Syncer follows one branch of a spec repository. Create it with New, run
// it with Run, read it with Current and Status, poke it with Trigger,
// Announce or the WebhookHandler, and stop it with Close or by cancelling
// Run's context.
type Syncer struct {
	cfg      Config
	log      *slog.Logger
	policy   *policy
	auth     transport.AuthMethod
	repoDir  string
	fetchURL string                 // what go-git is given; see transportURL
	ref      plumbing.ReferenceName // where the fetched branch head is kept

	trigger chan struct{}
	// announceKick wakes Run for an announcement, which fetches only
	// once AnnounceInterval has passed since the last round.
	announceKick chan struct{}
	baseCtx      context.Context
	baseStop     context.CancelFunc
	closeOnce    sync.Once

	runMu   sync.Mutex
	running bool
	done    chan struct{}

	// Owned by the Run goroutine.
	repo          *git.Repository
	store         *filesystem.Storage           // repo's storage, closed with closeRepo
	freshClone    bool                          // repo was created empty by this process
	evaluated     plumbing.Hash                 // last head judged, good or refused for good
	fetchFailures int                           // in a row
	fetchOnly     int                           // failed fetches in a row while the remote answered
	refused       map[plumbing.Hash]refusedHead // heads whose evaluation did not finish

	mu        sync.Mutex
	current   *shoal.Revision
	status    Status
	fetchErr  *SyncError // the remote could not be reached or read
	headErr   *SyncError // the newest head was refused
	announced map[plumbing.Hash]int
	lastRound time.Time // when the last fetch round started (Config.Now)
}

// New checks cfg and makes a Syncer. It does no I/O.
func New(cfg Config) (*Syncer, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	pol, err := newPolicy(c.TrustedPGPKeyring, c.AllowedSigners)
	if err != nil {
		return nil, err
	}
	auth, err := c.Auth.authMethod(c.URL)
	if err != nil {
		return nil, fmt.Errorf("gitsync: %w", err)
	}
	fetchURL, err := transportURL(c.URL)
	if err != nil {
		return nil, fmt.Errorf("gitsync: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Syncer{
		fetchURL:     fetchURL,
		cfg:          c,
		log:          c.Logger.With("component", "gitsync"),
		policy:       pol,
		auth:         auth,
		repoDir:      filepath.Join(c.DataDir, repoDirName),
		ref:          plumbing.NewRemoteReferenceName(git.DefaultRemoteName, c.Branch),
		trigger:      make(chan struct{}, 1),
		announceKick: make(chan struct{}, 1),
		baseCtx:      ctx,
		baseStop:     stop,
		announced:    make(map[plumbing.Hash]int),
		refused:      make(map[plumbing.Hash]refusedHead),
	}
	s.status = Status{URL: redactURL(c.URL), Branch: c.Branch, Path: c.Path, VerifyRequired: pol.enabled()}
	return s, nil
}

// Run restores the last good revision from disk (before any network
// access), then clones or opens the repository and keeps it current until
// ctx is cancelled or Close is called. It returns nil when stopped that way
// and an error only when it cannot start at all.
func (s *Syncer) Run(ctx context.Context) error {
	s.runMu.Lock()
	if s.running {
		s.runMu.Unlock()
		return errors.New("gitsync: run called twice")
	}
	if s.baseCtx.Err() != nil {
		s.runMu.Unlock()
		return errors.New("gitsync: run after close")
	}
	s.running = true
	s.done = make(chan struct{})
	s.runMu.Unlock()
	defer close(s.done)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.baseCtx, cancel)
	defer stop()

	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("gitsync: create data dir: %w", err)
	}
	defer s.closeRepo()
	if err := s.openRepo(); err != nil {
		s.log.Warn("cannot open the local clone", "err", err) // retried by the loop
	}
	s.restore()
	for {
		delay := s.syncOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if !s.wait(ctx, delay) {
			return nil
		}
	}
}

// wait sleeps until delay passes, a trigger comes, or an announcement
// comes once the announce interval since the last round has passed. It
// reports false when ctx ends.
func (s *Syncer) wait(ctx context.Context, delay time.Duration) bool {
	t := time.NewTimer(delay)
	defer t.Stop()
	due := time.Now().Add(delay)
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.trigger:
			return true
		case <-t.C:
			return true
		case <-s.announceKick:
			w := s.announceWait(s.cfg.Now())
			if w == 0 {
				return true
			}
			if at := time.Now().Add(w); at.Before(due) {
				due = at
				t.Reset(w)
			}
		}
	}
}

// Close stops Run and waits for it to return. It is safe to call more
// than once, and without Run.
func (s *Syncer) Close() error {
	s.closeOnce.Do(s.baseStop)
	s.runMu.Lock()
	done := s.done
	s.runMu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// Current is the revision in force (the last good one), or nil before the
// first. The caller must not modify it.
func (s *Syncer) Current() *shoal.Revision {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Status reports the syncer's state.
func (s *Syncer) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	if s.headErr != nil {
		e := *s.headErr
		e.Fields = append([]shoal.FieldError(nil), e.Fields...)
		st.Refused, st.Error = &e, &e
	}
	if s.fetchErr != nil {
		e := *s.fetchErr
		st.Error = &e
	}
	return st
}

// Trigger asks for a fetch now. It does not block.
func (s *Syncer) Trigger() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// restore loads the last good revision saved on disk and emits it. A head
// left under trial by the previous process is refused first: that process
// died evaluating or applying it.
func (s *Syncer) restore() {
	s.restoreRefused()
	st, err := loadState(s.cfg.DataDir)
	if err != nil {
		s.log.Error("cannot restore the last good revision", "err", err)
		return
	}
	if st == nil {
		return
	}
	if st.URL != s.cfg.URL || st.Branch != s.cfg.Branch || st.Path != s.cfg.Path {
		s.log.Warn("not restoring the saved revision: it came from another repository, branch or path",
			"saved_url", redactURL(st.URL), "saved_branch", st.Branch, "saved_path", st.Path)
		return
	}
	rev := st.Revision
	if err := s.reverify(rev); err != nil {
		s.log.Error("not restoring the saved revision: it does not pass the signature policy", "commit", rev.Short(), "err", err)
		return
	}
	s.log.Info("restored last good revision from disk", "commit", rev.Short(), "saved_at", st.SavedAt, "signer", rev.Signer)
	s.mu.Lock()
	s.current = rev
	s.status.Commit = rev.Commit
	s.status.Restored = true
	s.status.Verified = rev.Signer != "" && s.policy.enabled()
	s.status.Signer = rev.Signer
	s.mu.Unlock()
	s.evaluated = plumbing.NewHash(rev.Commit)
	if s.cfg.OnRevision != nil {
		s.cfg.OnRevision(rev)
	}
}

// restoreRefused loads the refused heads, adding the one the previous
// process died on, if any.
func (s *Syncer) restoreRefused() {
	dir := s.cfg.DataDir
	p, err := loadPending(dir)
	if err != nil {
		s.log.Error("cannot read the head under trial", "err", err)
	}
	if p != nil {
		msg := fmt.Sprintf("the agent stopped while evaluating or applying this commit (started %s): "+
			"refused so that it cannot stop the agent again; push a new commit", p.Started.Format(time.RFC3339))
		if st, _ := loadState(dir); st != nil && st.Revision.Commit == p.Commit {
			p = nil // saved as good before the stop
		} else if err := addRefused(dir, refusedHead{Commit: p.Commit, Message: msg, At: s.cfg.Now()}); err != nil {
			s.log.Error("cannot remember a refused head", "commit", short(p.Commit), "err", err)
		}
		if p != nil {
			s.log.Error("refusing the head the previous run stopped on", "commit", short(p.Commit))
		}
		if err := clearPending(dir); err != nil {
			s.log.Error("cannot clear the head under trial", "err", err)
		}
	}
	heads, err := loadRefused(dir)
	if err != nil {
		s.log.Error("cannot read the refused heads", "err", err)
	}
	for _, h := range heads {
		s.refused[plumbing.NewHash(h.Commit)] = h
	}
}

// reverify holds a saved revision to the current signature policy: the
// commit is verified again when the clone has it; otherwise the revision
// must have been verified when it was saved.
func (s *Syncer) reverify(rev *shoal.Revision) error {
	if !s.policy.enabled() {
		return nil
	}
	if s.repo != nil {
		if c, err := s.repo.CommitObject(plumbing.NewHash(rev.Commit)); err == nil {
			signer, err := s.policy.verify(c)
			if err != nil {
				return err
			}
			rev.Signer = signer
			return nil
		}
	}
	if rev.Signer == "" {
		return fmt.Errorf("%w: it was saved without verification and its commit is not in the clone", ErrUnsigned)
	}
	return nil
}

// syncOnce checks the remote, fetches when needed, judges the head, and
// returns how long to wait before the next round.
func (s *Syncer) syncOnce(ctx context.Context) time.Duration {
	now := s.cfg.Now()
	s.mu.Lock()
	s.status.LastAttempt = now
	s.lastRound = now
	// Announcements that this round's fetch serves; later ones wait for
	// the next round, which their trigger starts at once.
	round := make(map[plumbing.Hash]bool, len(s.announced))
	for h := range s.announced {
		round[h] = true
	}
	s.mu.Unlock()

	if err := s.openRepo(); err != nil {
		s.fail(ErrorRead, "", err, nil)
		return s.retryDelay()
	}
	// An idle fetch costs one small request (the remote's ref
	// advertisement): objects are asked for only when the head is new.
	if err := s.fetch(ctx); err != nil {
		if ctx.Err() != nil {
			return 0
		}
		// Tell a remote that is down from one that answers but fails to
		// serve the fetch; the second, repeated, suggests a damaged clone.
		if _, lerr := s.remoteHead(ctx); lerr == nil {
			s.fetchOnly++
		}
		s.fail(ErrorFetch, "", err, nil)
		if s.fetchOnly >= refetchAfter {
			s.log.Warn("fetch keeps failing while the remote answers; re-cloning", "failures", s.fetchOnly)
			s.dropRepo()
		}
		return s.retryDelay()
	}
	ref, err := s.repo.Reference(s.ref, true)
	if err != nil {
		s.fail(ErrorRead, "", fmt.Errorf("read %s after fetch: %w", s.ref, err), nil)
		s.dropRepo()
		return s.retryDelay()
	}
	head := ref.Hash()
	s.fetchOK(head)

	if cur := s.Current(); cur != nil && cur.Commit == head.String() && head != s.evaluated {
		// The branch came back to the revision in force (a refused head
		// was reverted): nothing to emit, nothing refused any more.
		s.evaluated = head
		s.mu.Lock()
		s.headErr = nil
		s.mu.Unlock()
	}
	if r, ok := s.refused[head]; ok && head != s.evaluated {
		s.evaluated = head
		s.fail(ErrorEvaluate, r.Commit, errors.New(r.Message), nil)
	}
	if head != s.evaluated {
		if err := s.evaluate(ctx, head); err != nil {
			var se *SyncError
			if errors.As(err, &se) && se.What == ErrorRead {
				s.dropRepo()
				return s.retryDelay()
			}
		}
	}
	if n, next := s.settleAnnounced(round); n > 0 {
		return max(next, s.announceWait(s.cfg.Now()))
	}
	return jitter(s.cfg.PollInterval, rand.Float64())
}

// retryDelay counts a failed round and returns the backoff before the next.
func (s *Syncer) retryDelay() time.Duration {
	s.fetchFailures++
	return jitter(backoffDelay(s.fetchFailures, s.cfg.MinBackoff, s.cfg.MaxBackoff), rand.Float64())
}
