package mesh

import (
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// msgBatch is udpBatch over golang.org/x/net's ReadBatch and WriteBatch
// (one datagram per call where the system has no recvmmsg).
type msgBatch struct {
	bc interface {
		ReadBatch(ms []ipv4.Message, flags int) (int, error)
		WriteBatch(ms []ipv4.Message, flags int) (int, error)
	}
	in, out []ipv4.Message
	bufs    [][]byte // out's buffers: setReply shortens out[j].Buffers[0]
}

func newMsgBatch(uc *net.UDPConn) *msgBatch {
	b := &msgBatch{bc: ipv4.NewPacketConn(uc), in: make([]ipv4.Message, batchLen), out: make([]ipv4.Message, batchLen), bufs: make([][]byte, batchLen)}
	if a, ok := uc.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil {
		b.bc = ipv6.NewPacketConn(uc)
	}
	for i := range b.in {
		b.in[i].Buffers = [][]byte{make([]byte, batchBuf)}
		b.bufs[i] = make([]byte, batchBuf)
		b.out[i].Buffers = [][]byte{b.bufs[i]}
	}
	return b
}

func (b *msgBatch) recv() (int, error) { return b.bc.ReadBatch(b.in, 0) }

func (b *msgBatch) query(i int) []byte {
	if b.in[i].Flags&syscall.MSG_TRUNC != 0 {
		return nil
	}
	return b.in[i].Buffers[0][:b.in[i].N]
}

func (b *msgBatch) replyBuf(j int) []byte { return b.bufs[j] }

func (b *msgBatch) setReply(j, i int, reply []byte) {
	b.out[j].Buffers[0], b.out[j].Addr = reply, b.in[i].Addr
}

func (b *msgBatch) from(i int) net.Addr { return b.in[i].Addr }

func (b *msgBatch) send(n int) error {
	for sent := 0; sent < n; {
		k, err := b.bc.WriteBatch(b.out[sent:n], 0)
		if err != nil {
			return err
		}
		sent += k
	}
	return nil
}

func (b *msgBatch) source(i int) netip.Addr {
	if a, ok := b.in[i].Addr.(*net.UDPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}
