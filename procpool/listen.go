//go:build linux

package procpool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// socket is what the primary holds for the cluster's address: the shared
// listening socket, or (reuseport mode) a bound, non-listening SO_REUSEPORT
// socket that reserves the port, reports bind errors once, in the primary,
// and fixes the port when the address asks for port 0. A bound socket that
// does not listen receives no connections.
type socket struct {
	file *os.File // F_DUPFD_CLOEXEC duplicate, non-blocking; handed to workers in shared mode
	ln   net.Listener
	addr *net.TCPAddr
	mode string

	closeOnce sync.Once
	closeErr  error
}

func bind(addr, mode string) (*socket, error) {
	if mode == ListenReusePort {
		return reserve(addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("procpool: %w", err) // names the address and the cause
	}
	f, err := dupListener(ln.(*net.TCPListener))
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &socket{file: f, ln: ln, addr: ln.Addr().(*net.TCPAddr), mode: mode}, nil
}

// adoptListener makes a listener opened by someone else (systemd) the
// cluster's socket.
func adoptListener(ln net.Listener, mode string) (*socket, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok || mode != ListenShared {
		return nil, fmt.Errorf("procpool: a passed listener (%T) must be TCP, in the %s listen mode", ln, ListenShared)
	}
	f, err := dupListener(tl)
	if err != nil {
		return nil, err
	}
	return &socket{file: f, ln: ln, addr: tl.Addr().(*net.TCPAddr), mode: mode}, nil
}

// dupListener duplicates the listener's descriptor without (*TCPListener).File,
// which would switch the shared file description to blocking mode for every
// process (golang/go#29277). os.NewFile of a non-blocking descriptor keeps it
// non-blocking, also when os/exec later calls Fd on it.
func dupListener(ln syscall.Conn) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("procpool: listener descriptor: %w", err)
	}
	var dup int
	var dupErr error
	if err := rc.Control(func(fd uintptr) {
		dup, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, fmt.Errorf("procpool: listener descriptor: %w", err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("procpool: duplicate listener: %w", dupErr)
	}
	return os.NewFile(uintptr(dup), "listener"), nil
}

// reserve binds a SO_REUSEPORT socket without listening on it.
func reserve(addr string) (*socket, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("procpool: resolve %s: %w", addr, err)
	}
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: ta.Port})
	if ip4 := ta.IP.To4(); ip4 != nil {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: ta.Port, Addr: [4]byte(ip4)}
	} else if ta.IP != nil {
		sa = &unix.SockaddrInet6{Port: ta.Port, Addr: [16]byte(ta.IP.To16())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("procpool: socket for %s: %w", addr, err)
	}
	fail := func(op string, err error) (*socket, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("procpool: %s %s: %w", op, addr, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("SO_REUSEPORT on", err)
	}
	if family == unix.AF_INET6 && ta.IP == nil {
		// Dual stack, as net.Listen does for an address without a host.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return fail("IPV6_V6ONLY off on", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("procpool: %w", &net.OpError{Op: "listen", Net: "tcp", Addr: ta, Err: os.NewSyscallError("bind", err)})
	}
	bound, err := boundAddr(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	if ta.IP == nil {
		bound.IP = nil // as asked: every address
	}
	return &socket{file: os.NewFile(uintptr(fd), "reservation"), addr: bound, mode: ListenReusePort}, nil
}

// boundAddr is the address socket fd is bound to.
func boundAddr(fd int) (*net.TCPAddr, error) {
	got, err := unix.Getsockname(fd)
	if err != nil {
		return nil, err
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}, nil
	case *unix.SockaddrInet6:
		ip := net.IP(a.Addr[:])
		if ip.IsUnspecified() {
			ip = nil
		}
		return &net.TCPAddr{IP: ip, Port: a.Port}, nil
	}
	return nil, fmt.Errorf("not a TCP socket: %T", got)
}

// childEnv returns what a worker needs to find its listener.
func (s *socket) childEnv() string {
	if s.mode == ListenReusePort {
		return listenEnv + "=reuseport:" + s.addr.String()
	}
	return listenEnv + "=fd"
}

// Close releases the primary's hold on the address. In shared mode the socket
// lives on while any worker still holds its duplicate.
// Close is idempotent.
func (s *socket) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.file.Close()
		if s.ln != nil {
			s.closeErr = errors.Join(s.closeErr, s.ln.Close())
		}
	})
	return s.closeErr
}

// listenReusePort binds a worker's own SO_REUSEPORT listener.
func listenReusePort(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("procpool: reuseport listen on %s: %w", addr, err)
	}
	return ln, nil
}
