//go:build !linux

package server

import (
	"net"
	"syscall"
)

// unreadBytes cannot tell outside Linux: 0.
func unreadBytes(syscall.RawConn) int { return 0 }

// unreadFD cannot tell outside Linux: 0.
func unreadFD(int) int { return 0 }

// holdListener holds nothing outside Linux.
func holdListener(net.Listener) int { return -1 }

// sweep takes nothing outside Linux.
func sweep(_, _ int) []net.Conn { return nil }

func closeFD(int) {}
