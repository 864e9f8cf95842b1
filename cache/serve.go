package cache

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// SocketName is the name Listen gives the socket in its directory.
const SocketName = "cache.sock"

// frameTimeout bounds one request, from its first byte to the end of its
// reply: a peer that stops halfway through a frame, or stops reading a
// reply, loses its connection instead of holding a goroutine, a reserved
// part of the byte bound and a value forever. An idle connection between
// frames has no deadline: the workers keep a few open.
const frameTimeout = 5 * time.Second

// readBuf is the size of each connection's read buffer. A value longer
// than it is read straight into its own allocation.
const readBuf = 4 << 10

// Listen creates the unix stream socket the box's workers reach the cache
// on, dir/cache.sock, mode 0600, and returns the listener and the path to
// pass to the workers ([NewClient]). The caller makes dir private (with
// os.MkdirTemp, 0700): the socket is created with the process's umask and
// only then set to 0600, and the directory is what keeps other users away
// in between. Serve checks each peer's uid in any case. Closing the
// listener removes the socket.
func Listen(dir string) (net.Listener, string, error) {
	path := filepath.Join(dir, SocketName)
	// sun_path holds 108 bytes with its terminating NUL.
	if len(path) > 107 {
		return nil, "", fmt.Errorf("cache: socket path %q is %d bytes: a unix socket's path is at most 107", path, len(path))
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, "", fmt.Errorf("cache: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("cache: listen: %w", err)
	}
	return ln, path, nil
}

// Serve answers the protocol (doc.go) on every connection ln accepts, each
// connection on its own goroutine, its requests one after another. It
// returns nil once ln is closed, after closing the connections still open
// and waiting for their goroutines; any other error from Accept that is
// not temporary is returned the same way.
//
// A connection is closed, and the server goes on serving the others, when
// its peer's uid (SO_PEERCRED) is not this process's effective uid, when
// MaxConns are open already, on a malformed frame, on a put's length over
// MaxEntry (refused before any allocation), and when a frame is not done
// within 5 s. A put's value is charged against MaxBytes from the moment its
// length is read, so values in flight count in the bound; a connection
// holds at most its 4 KiB read buffer, one value being received, and one
// being written.
func (m *Memory) Serve(ln net.Listener) error {
	euid := os.Geteuid()
	var (
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !temporary(err) {
				return fmt.Errorf("cache: accept: %w", err)
			}
			// Out of descriptors or a connection aborted in the backlog:
			// back off as net/http does, and go on.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			time.Sleep(delay)
			continue
		}
		delay = 0
		mu.Lock()
		if len(conns) >= m.cfg.MaxConns {
			mu.Unlock()
			c.Close()
			m.srv.refused.Add(1)
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.serveConn(c, euid)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
}

func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

func (m *Memory) serveConn(c net.Conn, euid int) {
	defer c.Close()
	if uid, err := peerUID(c); err != nil || uid != euid {
		m.srv.refused.Add(1)
		return
	}
	if err := m.serveFrames(c); err != nil {
		m.srv.errors.Add(1)
	}
}

// frameConn is what serveFrames needs of a connection.
type frameConn interface {
	io.Reader
	io.Writer
	SetDeadline(time.Time) error
}

// errRefused ends a connection after a refusal was sent.
var errRefused = errors.New("cache: request refused")

// serveFrames answers requests on c until it ends. It returns nil when the
// peer closed the connection between frames, and an error for a frame
// refused or cut off.
func (m *Memory) serveFrames(c frameConn) error {
	r := bufio.NewReaderSize(c, readBuf)
	var out [5]byte
	for {
		op, err := r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if err := c.SetDeadline(time.Now().Add(frameTimeout)); err != nil {
			return err
		}
		k, n, reason, err := readRequest(r, op, m.cfg.MaxEntry)
		switch {
		case err != nil:
			return err
		case reason != 0:
			out[0], out[1] = repError, reason
			c.Write(out[:2])
			return errRefused
		case op == opGet:
			err = m.replyGet(c, k, &out)
		case op == opStats:
			err = m.replyStats(c, &out)
		default:
			err = m.receivePut(c, r, k, n, &out)
		}
		if err != nil {
			return err
		}
		if err := c.SetDeadline(time.Time{}); err != nil {
			return err
		}
	}
}

// replyStats answers opStats: the server's Stats as JSON, in a hit.
func (m *Memory) replyStats(c frameConn, out *[5]byte) error {
	v, err := json.Marshal(m.Stats())
	if err != nil {
		return err
	}
	out[0] = repHit
	binary.BigEndian.PutUint32(out[1:5], uint32(len(v)))
	bufs := net.Buffers{out[:5], v}
	_, err = bufs.WriteTo(c)
	return err
}

func (m *Memory) replyGet(c frameConn, k Key, out *[5]byte) error {
	v, ok, _ := m.Get(context.Background(), k)
	if !ok {
		out[0] = repMiss
		_, err := c.Write(out[:1])
		return err
	}
	out[0] = repHit
	binary.BigEndian.PutUint32(out[1:5], uint32(len(v)))
	// One writev: the header and the stored bytes, never copied.
	bufs := net.Buffers{out[:5], v}
	_, err := bufs.WriteTo(c)
	return err
}

func (m *Memory) receivePut(c frameConn, r *bufio.Reader, k Key, n int, out *[5]byte) error {
	need := charge(n)
	if !m.reserve(need) {
		// No room while other values are in flight: read the value into
		// nothing, so the connection stays in step, and say so.
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return err
		}
		out[0], out[1] = repError, reasonFull
		_, err := c.Write(out[:2])
		return err
	}
	val := newValue(n)
	if _, err := io.ReadFull(r, val); err != nil {
		m.release(need)
		return err
	}
	m.commit(k, val, need)
	out[0] = repStored
	_, err := c.Write(out[:1])
	return err
}
