//go:build !linux

package cache

import (
	"errors"
	"net"
)

// peerUID fails where SO_PEERCRED does not exist, so Serve refuses every
// peer there: the box's cache is served on Linux only.
func peerUID(net.Conn) (int, error) {
	return -1, errors.New("cache: peer credentials are read on linux only")
}
