package mesh

import (
	"encoding/binary"
	"errors"
	"net"
	"syscall"
	"unsafe"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr: Go pads it to the kernel's size on every
// architecture.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// rawUDPBatch is a reader's recvmmsg and sendmmsg state. The calls are
// raw, inside RawConn.Read and Write, which still park the reader on the
// netpoller when the socket is empty: as a plain system call, sendmmsg
// (which on loopback runs the receiver's side too) outlasted sysmon's
// 20 µs often enough that sysmon kept polling and taking the P away: its
// thread alone was 8% of the server's CPU under dnsperf, and a fifth of
// the context switches (per-thread counts in /proc).
// A reply goes back to its query's address as the kernel wrote it.
type rawUDPBatch struct {
	in, out       []mmsghdr
	inIov, outIov []unix.Iovec
	inBuf, outBuf [][]byte
	names         []unix.RawSockaddrAny
}

func newRawUDPBatch() *rawUDPBatch {
	b := &rawUDPBatch{
		in: make([]mmsghdr, batchLen), out: make([]mmsghdr, batchLen),
		inIov: make([]unix.Iovec, batchLen), outIov: make([]unix.Iovec, batchLen),
		inBuf: make([][]byte, batchLen), outBuf: make([][]byte, batchLen),
		names: make([]unix.RawSockaddrAny, batchLen),
	}
	for i := range batchLen {
		b.inBuf[i], b.outBuf[i] = make([]byte, batchBuf), make([]byte, batchBuf)
		b.inIov[i].Base = &b.inBuf[i][0]
		b.inIov[i].SetLen(batchBuf)
		b.in[i].hdr.Iov = &b.inIov[i]
		b.in[i].hdr.SetIovlen(1)
		b.in[i].hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.out[i].hdr.Iov = &b.outIov[i]
		b.out[i].hdr.SetIovlen(1)
	}
	return b
}

// recv reads up to batchLen datagrams, waiting on the netpoller while
// there are none.
func (b *rawUDPBatch) recv(rc syscall.RawConn) (int, error) {
	for i := range b.in {
		b.in[i].hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
		b.in[i].hdr.Flags = 0
	}
	var n int
	var errno syscall.Errno
	err := rc.Read(func(fd uintptr) bool {
		r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), 0, 0, 0)
		n, errno = int(r), e
		return e != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return n, nil
}

// send writes out[:n], all of them unless the socket fails.
func (b *rawUDPBatch) send(rc syscall.RawConn, n int) error {
	for sent := 0; sent < n; {
		var k int
		var errno syscall.Errno
		err := rc.Write(func(fd uintptr) bool {
			r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[sent])), uintptr(n-sent), 0, 0, 0)
			k, errno = int(r), e
			return e != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if errno != 0 {
			return errno
		}
		sent += k
	}
	return nil
}

// udpAddr is the sender of datagram i, for the slow path.
func (b *rawUDPBatch) udpAddr(i int) *net.UDPAddr {
	sa := &b.names[i]
	switch sa.Addr.Family {
	case unix.AF_INET:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), p.Addr[:]...)), Port: int(port)}
	case unix.AF_INET6:
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), p.Addr[:]...)), Port: int(port)}
	}
	return nil
}

// readUDP answers queries from the socket until it is closed; see
// readUDPBatch, which this is with raw system calls.
func (d *DNS) readUDP(uc *net.UDPConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return d.readUDPBatch(uc)
	}
	b := newRawUDPBatch()
	name := make([]byte, 0, 256)
	for {
		n, err := b.recv(rc)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if err == unix.EINTR {
				continue
			}
			return err
		}
		replies := 0
		for i := range n {
			m := &b.in[i]
			if m.hdr.Flags&unix.MSG_TRUNC != 0 {
				continue
			}
			q := b.inBuf[i][:m.n]
			if reply, rcode, ok := d.cachedUDP(q, b.outBuf[replies][:batchBuf], name[:0]); ok {
				d.count(rcode) // before the write: a client that got its answer sees it counted
				o := &b.out[replies]
				b.outIov[replies].Base = unsafe.SliceData(reply)
				b.outIov[replies].SetLen(len(reply))
				o.hdr.Name, o.hdr.Namelen = m.hdr.Name, m.hdr.Namelen
				replies++
				continue
			}
			req := new(dns.Msg)
			if err := req.Unpack(q); err != nil || req.Response {
				continue // not a query: drop it, as miekg/dns does
			}
			if addr := b.udpAddr(i); addr != nil {
				go d.serve(&udpWriter{pc: uc, addr: addr}, req) // may forward: never block the reader
			}
		}
		if err := b.send(rc, replies); err != nil {
			d.log.Debug("dns write", "err", err) // the sender is gone or the buffer full: it retries, as over any UDP
		}
	}
}
