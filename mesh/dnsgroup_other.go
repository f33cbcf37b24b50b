//go:build !linux

package mesh

import (
	"errors"
	"net"
)

func spreadGroup(*net.UDPConn, int) error { return errors.ErrUnsupported }
