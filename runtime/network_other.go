//go:build !linux

package runtime

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
)

// network is Linux-only: elsewhere only host networking exists.
type network struct {
	gateway netip.Addr
	subnet  netip.Prefix
}

func newNetwork(context.Context, NetworkConfig, string, *slog.Logger) (*network, error) {
	return nil, errors.New("bridge networking needs Linux: run with --network host")
}

// CleanNetwork has nothing to clean where bridges are not made.
func CleanNetwork(context.Context, NetworkConfig, string) error { return nil }

func (n *network) allowServicePorts([]int) error { return nil }
func (n *network) attach(context.Context, string, uint32, []portMapping) (netip.Addr, error) {
	return netip.Addr{}, errors.New("bridge networking needs Linux")
}
func (n *network) detach(context.Context, string) error     { return nil }
func (n *network) unmap(string) error                       { return nil }
func (n *network) collect(context.Context, map[string]bool) {}
func (n *network) remove() error                            { return nil }
