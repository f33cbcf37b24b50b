//go:build !linux

package mesh

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// engine, off Linux, is a goroutine per connection direction copying with
// io.Copy. Linux has an event loop per core instead (balancer_linux.go).
type engine struct {
	listeners map[Route]net.Listener
	conns     map[net.Conn]struct{}
}

func (b *Balancer) listen(r Route, addr string, _ *svcCounters) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if b.eng.listeners == nil {
		b.eng.listeners, b.eng.conns = map[Route]net.Listener{}, map[net.Conn]struct{}{}
	}
	b.eng.listeners[r] = ln
	b.wg.Add(1)
	go b.accept(r, ln)
	return nil
}

func (b *Balancer) unlisten(r Route) {
	b.eng.listeners[r].Close()
	delete(b.eng.listeners, r)
}

// stop closes every listener and connection; closed is already set, so
// accept takes no more.
func (b *Balancer) stop() {
	for r, ln := range b.eng.listeners {
		ln.Close()
		delete(b.eng.listeners, r)
	}
	b.mu.Lock()
	for c := range b.eng.conns {
		c.Close()
	}
	b.mu.Unlock()
}

func (b *Balancer) accept(r Route, ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.eng.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.wg.Done()
			b.forward(r, c)
			b.mu.Lock()
			delete(b.eng.conns, c)
			b.mu.Unlock()
		}()
	}
}

func (b *Balancer) forward(r Route, client net.Conn) {
	defer client.Close()
	st := b.statsOf(r.Service)
	st.conns.Add(1)
	st.active.Add(1)
	defer st.active.Add(-1)
	st.mu.Lock()
	st.window.add(time.Now())
	st.mu.Unlock()

	backend, active := b.dial(r, st)
	if backend == nil {
		return
	}
	defer backend.Close()
	atomic.AddInt64(active, 1)
	defer atomic.AddInt64(active, -1)

	done := make(chan struct{})
	go func() {
		// io.Copy between TCP connections uses splice(2) on Linux.
		w, _ := io.Copy(backend, client)
		st.bytesIn.Add(uint64(w))
		closeWrite(backend)
		close(done)
	}()
	w, _ := io.Copy(client, backend)
	st.bytesOut.Add(uint64(w))
	closeWrite(client)
	<-done
}

// dial connects to a healthy instance of r. A failed connect tries another
// instance, up to five; with none to try, the connection waits in a queue
// for up to QueueTimeout, so a gap in the records (a replica moving, a
// peer's records dropped until it is seen again) delays the client
// instead of failing it.
func (b *Balancer) dial(r Route, st *svcCounters) (net.Conn, *int64) {
	var deadline time.Time
	for {
		cands := b.candidates(r)
		for attempt := 0; attempt < maxDialAttempts && len(cands) > 0; attempt++ {
			i := b.pick(cands)
			c, err := net.DialTimeout("tcp", cands[i].addr, b.cfg.DialTimeout)
			if err == nil {
				return c, cands[i].active
			}
			st.dialFailures.Add(1)
			b.log.Debug("dial backend", "service", r.Service, "addr", cands[i].addr, "err", err)
			cands = append(cands[:i:i], cands[i+1:]...)
		}
		now := time.Now()
		if deadline.IsZero() {
			if b.cfg.QueueTimeout < 0 {
				return nil, nil
			}
			deadline = now.Add(b.cfg.QueueTimeout)
		}
		if now.After(deadline) {
			b.log.Debug("no healthy instance", "service", r.Service, "port", r.PortName)
			return nil, nil
		}
		select {
		case <-b.done:
			return nil, nil
		case <-time.After(queuePoll):
		}
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
}
