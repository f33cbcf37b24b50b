//go:build !linux

package mesh

import "net"

func newUDPBatch(uc *net.UDPConn) (udpBatch, error) { return newMsgBatch(uc), nil }
