package mesh

import (
	"fmt"
	"net"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// spreadGroup has the kernel hand each datagram to a random socket of a
// SO_REUSEPORT group of n, instead of one chosen by a hash of the
// sender's address and port: a few busy clients (a resolver's few
// sockets, dnsperf's eight) split by the hash 6 to 2 as often as 4 to 4,
// and one reader did most of the work while another idled.
func spreadGroup(c *net.UDPConn, n int) error {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtRand},
		bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: uint32(n)},
		bpf.RetA{},
	})
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fprog)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_ATTACH_REUSEPORT_CBPF: %w", serr)
	}
	return nil
}
