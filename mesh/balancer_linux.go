//go:build linux

package mesh

import (
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// On Linux the balancer runs one event loop per core, each with its own
// epoll set. Every loop watches each port's one listening socket with
// EPOLLEXCLUSIVE, so a new connection wakes one idle loop, and lives on
// that thread from accept to close. (A SO_REUSEPORT socket per loop
// instead spreads connections by hash, busy loop or not: p99 with a new
// connection per request was 1.2–1.4× HAProxy's, against 0.9–1.2×.)
// This is HAProxy's
// shape, and it is what closes the gap to it: with a goroutine per
// direction, every exchange cost two goroutine wake-ups through Go's
// netpoller and, because Go hides epoll's event flags, one more read per
// direction that finds the socket empty (a short read cannot be trusted
// to mean "drained" when a FIN may be queued behind the data). Here the
// loop sees EPOLLRDHUP and reads again only when the peer has shut down.

// engine is the balancer's event loops, started by the first listen.
type engine struct {
	loops     []*evloop
	listeners map[Route]int // the route's listening socket, watched by every loop
}

const (
	relayBufSize = 32 << 10 // a read that fills less has drained the socket
	holdWait     = 1        // ms an event loop waits for events before it lets its P go
	acceptBatch  = 32       // accepts per readiness, so one port cannot starve the rest
	epollEdge    = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
)

var pendingBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// listen binds addr and has every loop watch the socket. Called under
// routesMu, not mu: a loop may take mu while it runs.
func (b *Balancer) listen(r Route, addr string, st *svcCounters) error {
	if b.eng.loops == nil {
		if err := b.startLoops(); err != nil {
			return fmt.Errorf("start event loops: %w", err)
		}
	}
	fd, err := listenFD(addr)
	if err != nil {
		return err
	}
	b.eng.listeners[r] = fd
	for _, l := range b.eng.loops {
		l.do(func() { l.addListener(fd, r, st) })
	}
	return nil
}

// unlisten has every loop stop watching r's socket, then closes it.
func (b *Balancer) unlisten(r Route) {
	fd := b.eng.listeners[r]
	for _, l := range b.eng.loops {
		l.do(func() { l.removeListener(fd) })
	}
	unix.Close(fd)
	delete(b.eng.listeners, r)
}

// stop closes every listener and connection and ends the loops.
func (b *Balancer) stop() {
	for _, l := range b.eng.loops {
		l.do(l.shutdown)
	}
	for r, fd := range b.eng.listeners {
		unix.Close(fd)
		delete(b.eng.listeners, r)
	}
}

func (b *Balancer) startLoops() error {
	// By default one P is left to the rest of the process. With every P
	// held by a loop, the collector and the process's other goroutines
	// wait for preemption; with every P blocked in epoll_wait, sysmon
	// takes them back from the loops every 20 µs and hands them to other
	// threads, which cost a fifth of the CPU (measured with bench/).
	n := b.cfg.Loops
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)-1)
	}
	var loops []*evloop
	for range n {
		l, err := newEvloop(b)
		if err != nil {
			for _, l := range loops {
				l.release()
			}
			return err
		}
		loops = append(loops, l)
	}
	b.eng.loops, b.eng.listeners = loops, map[Route]int{}
	for _, l := range loops {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			l.run()
		}()
	}
	return nil
}

// listenFD listens on addr and takes the socket out of Go's netpoller: a
// duplicate descriptor (non-blocking like the original, the flag being
// the socket's) outlives closing the listener, which Go deregisters
// first.
func listenFD(addr string) (int, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return -1, err
	}
	defer ln.Close()
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// evloop is one event loop. Everything below except do is called on the
// loop's own goroutine and needs no lock.
type evloop struct {
	b      *Balancer
	epfd   int
	wakefd int // an eventfd: do writes it so the loop runs its commands

	mu     sync.Mutex
	cmds   []func()
	exited bool

	gen       uint32      // tags epoll registrations, so a stale event for a reused fd is ignored
	dials     uint64      // numbers dials, so an entry in dialing can tell it is stale
	cands     []candidate // scratch for dial
	listeners map[int32]*lnState
	eps       map[int32]*endpoint
	dialing   []dialEntry // by deadline: all dials share one timeout
	queued    []*pair     // waiting for an instance, in arrival order
	paused    []*lnState  // listeners resting after an accept error
	buf       []byte
	events    []unix.EpollEvent
	stop      bool
}

type lnState struct {
	fd      int
	route   Route
	st      *svcCounters
	resume  time.Time
	removed bool
}

type dialEntry struct {
	p        *pair
	attempt  uint64
	deadline time.Time
}

// A pair is one client connection and, once dialled, its instance's.
type pair struct {
	route           Route
	st              *svcCounters
	client, backend endpoint
	state           pairState
	addr            string // instance, while dialling or open
	active          *int64 // the instance's open-connection count, counted in while open
	attempt         uint64 // the loop's number for the current dial
	round           int    // dials made since the last queue wait
	tried           []string
	queueDeadline   time.Time
	nextPoll        time.Time
}

type pairState uint8

const (
	queued pairState = iota
	dialing
	open
	closed
)

// An endpoint is one socket of a pair with the readiness epoll reported
// (edge-triggered, so the loop keeps it until a read or write says EAGAIN).
type endpoint struct {
	fd       int
	gen      uint32
	p        *pair
	readable bool
	writable bool
	hup      bool   // the peer shut down or failed: read until EOF, a short read proves nothing
	eof      bool   // nothing more will be read from this end
	shut     bool   // ...and the other end's write side has been shut
	pending  []byte // read from this end, not yet written to the other
	pbuf     *[]byte
}

func newEvloop(b *Balancer) (*evloop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	l := &evloop{b: b, epfd: epfd, wakefd: wakefd, listeners: map[int32]*lnState{}, eps: map[int32]*endpoint{},
		buf: make([]byte, relayBufSize), events: make([]unix.EpollEvent, 256)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}); err != nil {
		l.release()
		return nil, fmt.Errorf("epoll add: %w", err)
	}
	return l, nil
}

func (l *evloop) release() {
	unix.Close(l.wakefd)
	unix.Close(l.epfd)
}

// do runs f on the loop and waits for it.
func (l *evloop) do(f func()) {
	done := make(chan struct{})
	l.mu.Lock()
	if l.exited {
		l.mu.Unlock()
		return
	}
	l.cmds = append(l.cmds, func() { f(); close(done) })
	l.mu.Unlock()
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(l.wakefd, one[:])
	<-done
}

func (l *evloop) runCmds() {
	var b [8]byte
	unix.Read(l.wakefd, b[:])
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, f := range cmds {
		f()
	}
}

func (l *evloop) run() {
	defer func() {
		l.mu.Lock()
		l.exited = true
		cmds := l.cmds
		l.cmds = nil
		l.mu.Unlock()
		for _, f := range cmds { // nothing is left to act on; release the callers
			f()
		}
		l.release()
	}()
	for !l.stop {
		// Wait briefly keeping the P (see rawsys_linux.go): under load the
		// next event comes sooner. Only an idle loop blocks the Go way,
		// letting its P go.
		timeout := l.timeout(time.Now())
		hold := holdWait
		if timeout >= 0 && timeout < hold {
			hold = timeout
		}
		n, err := rawEpollWait(l.epfd, l.events, hold)
		if n == 0 && err == nil && timeout != hold {
			n, err = unix.EpollWait(l.epfd, l.events, l.timeout(time.Now()))
		}
		if err != nil && err != unix.EINTR {
			l.b.log.Error("balancer event loop", "err", err)
			l.shutdown()
			return
		}
		for _, ev := range l.events[:max(n, 0)] {
			switch {
			case ev.Fd == int32(l.wakefd):
				l.runCmds()
			case l.listeners[ev.Fd] != nil:
				l.accept(l.listeners[ev.Fd])
			default:
				if e := l.eps[ev.Fd]; e != nil && e.gen == uint32(ev.Pad) {
					l.event(e, ev.Events)
				}
			}
		}
		l.expire(time.Now())
	}
}

// timeout is epoll_wait's: until the next dial deadline, queue poll or
// listener resume; -1 with none.
func (l *evloop) timeout(now time.Time) int {
	for len(l.dialing) > 0 && l.dialing[0].stale() {
		l.dialing = l.dialing[1:]
	}
	var next time.Time
	consider := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	if len(l.dialing) > 0 {
		consider(l.dialing[0].deadline)
	}
	if len(l.queued) > 0 {
		consider(l.queued[0].nextPoll)
	}
	for _, ln := range l.paused {
		consider(ln.resume)
	}
	if next.IsZero() {
		return -1
	}
	d := next.Sub(now)
	if d <= 0 {
		return 0
	}
	return int((d + time.Millisecond - 1) / time.Millisecond)
}

func (e dialEntry) stale() bool { return e.p.state != dialing || e.p.attempt != e.attempt }

// expire fails dials past their deadline, retries queued connections and
// resumes paused listeners.
func (l *evloop) expire(now time.Time) {
	for len(l.dialing) > 0 {
		e := l.dialing[0]
		if !e.stale() && now.Before(e.deadline) {
			break
		}
		l.dialing = l.dialing[1:]
		if !e.stale() {
			l.dialFailed(e.p, unix.ETIMEDOUT, now)
		}
	}
	for len(l.queued) > 0 && !now.Before(l.queued[0].nextPoll) {
		p := l.queued[0]
		l.queued = l.queued[1:]
		if p.state == queued {
			p.round, p.tried = 0, p.tried[:0]
			l.dial(p, now)
		}
	}
	l.paused = slices.DeleteFunc(l.paused, func(ln *lnState) bool {
		switch {
		case ln.removed:
			return true // closed while resting
		case now.Before(ln.resume):
			return false
		}
		l.watchListener(ln)
		return true
	})
}

func (l *evloop) addListener(fd int, r Route, st *svcCounters) {
	ln := &lnState{fd: fd, route: r, st: st}
	l.listeners[int32(fd)] = ln
	l.watchListener(ln)
}

func (l *evloop) watchListener(ln *lnState) {
	// Level-triggered: a backlog left after acceptBatch is reported again.
	// Exclusive: a connection wakes one waiting loop, not all of them.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: int32(ln.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, ln.fd, &ev); err != nil {
		l.b.log.Error("balancer cannot watch its listener", "service", ln.route.Service, "err", err)
	}
}

// removeListener stops watching a listening socket; the balancer closes
// it once no loop watches it.
func (l *evloop) removeListener(fd int) {
	if ln := l.listeners[int32(fd)]; ln != nil {
		ln.removed = true
		delete(l.listeners, int32(fd))
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil) // fails harmlessly if paused
	}
}

func (l *evloop) accept(ln *lnState) {
	for range acceptBatch {
		fd, err := rawAccept(ln.fd)
		switch {
		case err == nil:
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR || err == unix.ECONNABORTED:
			continue
		default:
			// Out of descriptors or memory: rest the listener a moment
			// rather than spin on a backlog that cannot be accepted.
			l.b.log.Warn("balancer accept", "service", ln.route.Service, "err", err)
			unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, ln.fd, nil)
			ln.resume = time.Now().Add(10 * time.Millisecond)
			l.paused = append(l.paused, ln)
			return
		}
		rawSetsockopt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // as Go's net does: the balancer forwards whole messages
		p := &pair{route: ln.route, st: ln.st}
		ln.st.conns.Add(1)
		ln.st.active.Add(1)
		now := time.Now()
		ln.st.mu.Lock()
		ln.st.window.add(now)
		ln.st.mu.Unlock()
		if err := l.register(&p.client, fd, p); err != nil {
			l.b.log.Warn("balancer", "err", err)
			rawClose(fd)
			ln.st.active.Add(-1)
			continue
		}
		l.dial(p, now)
	}
}

func (l *evloop) register(e *endpoint, fd int, p *pair) error {
	l.gen++
	*e = endpoint{fd: fd, gen: l.gen, p: p}
	ev := unix.EpollEvent{Events: epollEdge, Fd: int32(fd), Pad: int32(l.gen)}
	if err := rawEpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add: %w", err)
	}
	l.eps[int32(fd)] = e
	return nil
}

// dial connects p to a healthy instance not yet tried in this round. A
// failed connect tries another, up to maxDialAttempts; with none to try,
// the connection waits in the queue for up to QueueTimeout, so a gap in
// the records (a replica moving, a peer's records dropped until it is
// seen again) delays the client instead of failing it.
func (l *evloop) dial(p *pair, now time.Time) {
	b := l.b
	for p.round < maxDialAttempts {
		cands := l.cands[:0]
		for _, c := range b.candidates(p.route) {
			if !slices.Contains(p.tried, c.addr) {
				cands = append(cands, c)
			}
		}
		l.cands = cands
		if len(cands) == 0 {
			break
		}
		c := cands[b.pick(cands)]
		l.dials++
		p.attempt = l.dials
		p.round++
		p.tried = append(p.tried, c.addr)
		fd, err := rawDial(c.ip, c.port)
		if err == nil {
			if err = l.register(&p.backend, fd, p); err != nil {
				rawClose(fd)
			}
		}
		if err != nil {
			p.st.dialFailures.Add(1)
			b.log.Debug("dial backend", "service", p.route.Service, "addr", c.addr, "err", err)
			continue
		}
		p.state, p.addr, p.active = dialing, c.addr, c.active
		l.dialing = append(l.dialing, dialEntry{p: p, attempt: p.attempt, deadline: now.Add(b.cfg.DialTimeout)})
		return
	}
	if b.cfg.QueueTimeout < 0 {
		l.closePair(p)
		return
	}
	if p.queueDeadline.IsZero() {
		p.queueDeadline = now.Add(b.cfg.QueueTimeout)
	}
	if now.After(p.queueDeadline) {
		b.log.Debug("no healthy instance", "service", p.route.Service, "port", p.route.PortName)
		l.closePair(p)
		return
	}
	p.state, p.nextPoll = queued, now.Add(queuePoll)
	l.queued = append(l.queued, p)
}

func (l *evloop) dialFailed(p *pair, err error, now time.Time) {
	p.st.dialFailures.Add(1)
	l.b.log.Debug("dial backend", "service", p.route.Service, "addr", p.addr, "err", err)
	l.closeEndpoint(&p.backend)
	p.state = queued // until dial decides
	l.dial(p, now)
}

func (l *evloop) event(e *endpoint, events uint32) {
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.readable = true
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.hup = true
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		e.writable = true
	}
	p := e.p
	switch p.state {
	case dialing:
		if e == &p.backend && e.writable {
			l.connected(p)
		}
	case open:
		l.pump(p)
	}
}

// connected finishes a dial whose socket turned writable: it either
// connected or failed.
func (l *evloop) connected(p *pair) {
	if err := rawSoError(p.backend.fd); err != nil {
		l.dialFailed(p, err, time.Now())
		return
	}
	p.state = open
	atomic.AddInt64(p.active, 1)
	l.pump(p)
}

func (l *evloop) pump(p *pair) {
	if err := l.move(&p.client, &p.backend, &p.st.bytesIn); err != nil {
		l.closePair(p)
		return
	}
	if err := l.move(&p.backend, &p.client, &p.st.bytesOut); err != nil {
		l.closePair(p)
		return
	}
	if p.client.shut && p.backend.shut {
		l.closePair(p)
	}
}

type byteCounter interface{ Add(uint64) uint64 }

// move copies what src has to dst until one of them would block, and
// passes src's EOF on as a shutdown of dst's write side.
func (l *evloop) move(src, dst *endpoint, count byteCounter) error {
	for {
		if len(src.pending) > 0 {
			if !dst.writable {
				return nil
			}
			n, err := rawWrite(dst.fd, src.pending)
			switch err {
			case nil:
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				dst.writable = false
				return nil
			default:
				return err
			}
			count.Add(uint64(n))
			src.pending = src.pending[n:]
			if len(src.pending) > 0 {
				dst.writable = false // its send buffer is full; EPOLLOUT says when it drains
				return nil
			}
			pendingBufs.Put(src.pbuf)
			src.pbuf, src.pending = nil, nil
		}
		if src.eof {
			if !src.shut {
				if !dst.shut { // else both ends are done and about to be closed
					rawShutdownWrite(dst.fd)
				}
				src.shut = true
			}
			return nil
		}
		if !src.readable {
			return nil
		}
		n, err := rawRead(src.fd, l.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			src.readable = false
			return nil
		case err != nil:
			return err
		case n == 0:
			src.eof = true
			continue
		case n < len(l.buf) && !src.hup:
			src.readable = false // drained; the next data brings a new edge
		}
		data := l.buf[:n]
		if dst.writable {
			m, err := rawWrite(dst.fd, data)
			switch err {
			case nil:
				count.Add(uint64(m))
				data = data[m:]
				if len(data) > 0 {
					dst.writable = false // its send buffer is full; EPOLLOUT says when it drains
				}
			case unix.EINTR: // written from pending on the next turn
			case unix.EAGAIN:
				dst.writable = false
			default:
				return err
			}
		}
		if len(data) > 0 {
			src.pbuf = pendingBufs.Get().(*[]byte)
			src.pending = append((*src.pbuf)[:0], data...)
		}
	}
}

func (l *evloop) closeEndpoint(e *endpoint) {
	if e.p == nil || e.fd < 0 {
		return
	}
	delete(l.eps, int32(e.fd))
	rawClose(e.fd) // leaves the epoll set with it
	if e.pbuf != nil {
		pendingBufs.Put(e.pbuf)
	}
	*e = endpoint{fd: -1, p: e.p}
}

func (l *evloop) closePair(p *pair) {
	if p.state == closed {
		return
	}
	if p.state == open {
		atomic.AddInt64(p.active, -1)
	}
	p.state = closed
	l.closeEndpoint(&p.client)
	l.closeEndpoint(&p.backend)
	p.st.active.Add(-1)
}

// shutdown closes every listener and connection of the loop and ends it.
func (l *evloop) shutdown() {
	for fd := range l.listeners {
		l.removeListener(int(fd))
	}
	pairs := map[*pair]bool{}
	for _, e := range l.eps {
		pairs[e.p] = true
	}
	for _, p := range l.queued {
		pairs[p] = true
	}
	for p := range pairs {
		l.closePair(p)
	}
	l.queued, l.dialing, l.paused = nil, nil, nil
	l.stop = true
}
