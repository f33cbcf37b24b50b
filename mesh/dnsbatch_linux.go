package mesh

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr: Go pads it to the kernel's size on every
// architecture.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// rawUDPBatch is udpBatch with recvmmsg and sendmmsg. The calls are
// raw, inside RawConn.Read and Write, which still park the reader on the
// netpoller when the socket is empty: as a plain system call, sendmmsg
// (which on loopback runs the receiver's side too) outlasted sysmon's
// 20 µs often enough that sysmon kept polling and taking the P away: its
// thread alone was 8% of the server's CPU under dnsperf, and a fifth of
// the context switches (per-thread counts in /proc).
// A reply goes back to its query's address as the kernel wrote it.
type rawUDPBatch struct {
	rc            syscall.RawConn
	in, out       []mmsghdr
	inIov, outIov []unix.Iovec
	inBuf, outBuf [][]byte
	names         []unix.RawSockaddrAny
}

func newUDPBatch(uc *net.UDPConn) (udpBatch, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &rawUDPBatch{
		rc: rc,
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
	return b, nil
}

// recv reads up to batchLen datagrams, waiting on the netpoller while
// there are none.
func (b *rawUDPBatch) recv() (int, error) {
	for i := range b.in {
		b.in[i].hdr.Namelen = uint32(unsafe.Sizeof(b.names[i]))
		b.in[i].hdr.Flags = 0
	}
	var n int
	var errno syscall.Errno
	err := b.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.in[0])), uintptr(len(b.in)), 0, 0, 0)
			if n, errno = int(r), e; e != unix.EINTR {
				return e != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return n, nil
}

func (b *rawUDPBatch) query(i int) []byte {
	if b.in[i].hdr.Flags&unix.MSG_TRUNC != 0 {
		return nil
	}
	return b.inBuf[i][:b.in[i].n]
}

func (b *rawUDPBatch) replyBuf(j int) []byte { return b.outBuf[j] }

func (b *rawUDPBatch) setReply(j, i int, reply []byte) {
	b.outIov[j].Base = unsafe.SliceData(reply)
	b.outIov[j].SetLen(len(reply))
	b.out[j].hdr.Name, b.out[j].hdr.Namelen = b.in[i].hdr.Name, b.in[i].hdr.Namelen
}

// send writes out[:n], all of them unless the socket fails.
func (b *rawUDPBatch) send(n int) error {
	for sent := 0; sent < n; {
		var k int
		var errno syscall.Errno
		err := b.rc.Write(func(fd uintptr) bool {
			for {
				r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.out[sent])), uintptr(n-sent), 0, 0, 0)
				if k, errno = int(r), e; e != unix.EINTR {
					return e != unix.EAGAIN
				}
			}
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

func (b *rawUDPBatch) from(i int) net.Addr {
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

func (b *rawUDPBatch) source(i int) netip.Addr {
	sa := &b.names[i]
	switch sa.Addr.Family {
	case unix.AF_INET:
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		return netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(sa)).Addr).Unmap()
	}
	return netip.Addr{}
}
