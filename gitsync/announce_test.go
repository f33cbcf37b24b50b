package gitsync

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestAnnounceRateLimited: announcements of random commits within the
// interval after a fetch round start no fetch; once the interval has
// passed, one does.
func TestAnnounceRateLimited(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	s, err := New(Config{URL: "file:///nonexistent", DataDir: t.TempDir(), Now: clock.Now, AnnounceInterval: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	s.lastRound = clock.Now() // a round just happened
	for i := range 500 {
		s.Announce(fmt.Sprintf("%040x", i+1))
	}
	if len(s.announced) != maxAnnounced {
		t.Errorf("%d commits awaited, want the cap %d", len(s.announced), maxAnnounced)
	}
	// The loop's wait must not end for them: only ctx ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if s.wait(ctx, time.Hour) {
		t.Fatal("announcements within the interval started a fetch")
	}
	clock.advance(time.Minute)
	s.Announce(fmt.Sprintf("%040x", 9999))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if !s.wait(ctx2, time.Hour) {
		t.Fatal("an announcement after the interval did not start a fetch")
	}
	if w := s.announceWait(clock.Now()); w != 0 {
		t.Errorf("announceWait = %v after the interval", w)
	}
}

// TestAnnounceWaitShortensDelay: an announcement during a long sleep
// wakes the loop when the interval ends, not at the next poll.
func TestAnnounceWaitShortensDelay(t *testing.T) {
	s, err := New(Config{URL: "file:///nonexistent", DataDir: t.TempDir(), AnnounceInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	s.lastRound = time.Now()
	s.Announce(fmt.Sprintf("%040x", 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !s.wait(ctx, time.Hour) {
		t.Fatal("the announcement was not served when the interval ended")
	}
}
