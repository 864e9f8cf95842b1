//go:build linux

package server

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// unreadBytes returns the bytes waiting in the socket's receive queue
// (SIOCINQ, which is FIONREAD); 0 if it cannot tell.
// unreadFD is FIONREAD (SIOCINQ) of a socket's descriptor; 0 on error.
func unreadFD(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}

func unreadBytes(rc syscall.RawConn) int {
	n := 0
	rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}

// holdListener returns a duplicate of ln's descriptor, which keeps the
// listening socket open for one last sweep (see listener.stop) after ln is
// closed; -1 if ln is not a socket.
func holdListener(ln net.Listener) int {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	held := -1
	rc.Control(func(fd uintptr) {
		if dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); err == nil {
			held = dup
		}
	})
	return held
}

// sweep takes up to max connections waiting in the accept queue of the
// listening socket fd, without blocking, then closes fd: between the last
// accept and the close, when a connection the kernel completes would be
// reset, there is one system call.
func sweep(fd, max int) []net.Conn {
	var fds []int
	for len(fds) < max {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == unix.ECONNABORTED || err == unix.EINTR {
			continue
		}
		if err != nil { // EAGAIN: the queue is empty
			break
		}
		fds = append(fds, nfd)
	}
	unix.Close(fd)
	conns := make([]net.Conn, 0, len(fds))
	for _, nfd := range fds {
		f := os.NewFile(uintptr(nfd), "swept")
		c, err := net.FileConn(f) // dups the descriptor
		f.Close()
		if err == nil {
			conns = append(conns, c)
		}
	}
	return conns
}

func closeFD(fd int) { unix.Close(fd) }
