package gitsync

import (
	"math/rand/v2"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
)

// Announce tells the syncer that a peer saw commit on the remote. Unless it
// is already here, the syncer fetches until it is present, at most
// Config.AnnounceAttempts times with backoff. It does not block; a malformed
// hash is ignored.
//
// Announcements come from any peer that holds the gossip key, so they are
// rate-limited: they start at most one fetch per Config.AnnounceInterval,
// and one fetch serves every commit awaited. A storm of random commits
// costs each node one fetch per interval, no more.
func (s *Syncer) Announce(commit string) {
	commit = strings.ToLower(strings.TrimSpace(commit))
	if len(commit) != 40 || !isHex(commit) {
		s.log.Debug("ignoring malformed announced commit", "commit", commit)
		return
	}
	h := plumbing.NewHash(commit)
	s.mu.Lock()
	if s.current != nil && s.current.Commit == commit {
		s.mu.Unlock()
		return
	}
	if _, ok := s.announced[h]; !ok && len(s.announced) < maxAnnounced {
		s.announced[h] = 0
	}
	s.mu.Unlock()
	// Run fetches at once, or when the interval since the last round ends.
	select {
	case s.announceKick <- struct{}{}:
	default:
	}
}

// announceWait is how long until an announcement may start a fetch.
func (s *Syncer) announceWait(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.announceWaitLocked(now)
}

func (s *Syncer) announceWaitLocked(now time.Time) time.Duration {
	if s.lastRound.IsZero() {
		return 0
	}
	return max(s.lastRound.Add(s.cfg.AnnounceInterval).Sub(now), 0)
}

func isHex(s string) bool {
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// settleAnnounced drops announced commits that arrived or, among those
// this round fetched for, ran out of attempts; it returns how many are
// still awaited and the delay before the next try.
func (s *Syncer) settleAnnounced(round map[plumbing.Hash]bool) (int, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	maxAttempts := 0
	for h, n := range s.announced {
		if !round[h] {
			continue
		}
		if s.hasCommit(h) {
			delete(s.announced, h)
			continue
		}
		n++
		if n >= s.cfg.AnnounceAttempts {
			s.log.Warn("announced commit did not appear on the remote; giving up", "commit", short(h.String()), "fetches", n)
			delete(s.announced, h)
			continue
		}
		s.announced[h] = n
		maxAttempts = max(maxAttempts, n)
	}
	if len(s.announced) == 0 {
		return 0, 0
	}
	return len(s.announced), jitter(backoffDelay(maxAttempts, s.cfg.MinBackoff, s.cfg.MaxBackoff), rand.Float64())
}
