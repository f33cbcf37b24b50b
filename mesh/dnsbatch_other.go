//go:build !linux

package mesh

import "net"

func (d *DNS) readUDP(uc *net.UDPConn) error { return d.readUDPBatch(uc) }
