//go:build linux

package procpool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IsWorker reports whether this process was started by a [Supervisor] as one
// of its workers.
func IsWorker() bool { return os.Getenv(RoleEnv) == RoleWorker }

// Worker is the worker process's end of the control channel. It is safe for
// concurrent use.
type Worker struct {
	// ID is the worker's slot number, 1 to Config.Workers. A restarted or
	// reloaded worker keeps the ID of the slot it fills.
	ID int

	listen string
	board  *board // nil: accept whenever the kernel says
	entry  int
	ctrl   net.Conn
	mu     sync.Mutex // serialises writes on ctrl
	gone   chan struct{}

	poolSize    atomic.Int64  // set at run time by the primary; 0: none
	poolChanged chan struct{} // one pending notice of a poolSize change
}

// Attach connects to the primary through the descriptors and environment it
// set up. It fails in a process that is not a worker.
func Attach() (*Worker, error) {
	if !IsWorker() {
		return nil, fmt.Errorf("procpool: not a worker process (%s is %q)", RoleEnv, os.Getenv(RoleEnv))
	}
	id, err := strconv.Atoi(os.Getenv(workerIDEnv))
	if err != nil {
		return nil, fmt.Errorf("procpool: bad %s: %w", workerIDEnv, err)
	}
	f := os.NewFile(controlFD, "control")
	ctrl, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("procpool: control channel on fd %d: %w", controlFD, err)
	}
	w := &Worker{ID: id, listen: os.Getenv(listenEnv), ctrl: ctrl, gone: make(chan struct{}), poolChanged: make(chan struct{}, 1)}
	if n, err := strconv.Atoi(os.Getenv(poolSizeEnv)); err == nil && n > 0 {
		w.poolSize.Store(int64(n))
	}
	if v := os.Getenv(boardEnv); v != "" {
		var n int
		if _, err := fmt.Sscanf(v, "%d/%d", &w.entry, &n); err != nil || w.entry < 0 || w.entry >= n {
			ctrl.Close()
			return nil, fmt.Errorf("procpool: bad %s %q", boardEnv, v)
		}
		if w.board, err = openBoard(boardFD, n); err != nil {
			ctrl.Close()
			return nil, err
		}
	}
	go w.watchParent()
	return w, nil
}

// watchParent reads the primary's messages, and closes gone when the
// control channel reaches EOF: the primary has exited, however it died.
func (w *Worker) watchParent() {
	defer close(w.gone)
	sc := bufio.NewScanner(w.ctrl)
	for sc.Scan() {
		var m message
		if json.Unmarshal(sc.Bytes(), &m) != nil || m.Type != msgPoolSize || m.Size < 1 {
			continue
		}
		w.poolSize.Store(int64(m.Size))
		select {
		case w.poolChanged <- struct{}{}:
		default: // a notice is pending; PoolSize reads the latest
		}
	}
	io.Copy(io.Discard, w.ctrl) // a line too long stops the scanner, not the channel
}

// PoolSize returns the task-pool size the primary set at run time
// ([Supervisor.SetPoolSize]), or 0 if it set none: the flags' size holds.
func (w *Worker) PoolSize() int { return int(w.poolSize.Load()) }

// PoolSizeChanged receives once after each change of [Worker.PoolSize]
// (changes in a quick row may come as one).
func (w *Worker) PoolSizeChanged() <-chan struct{} { return w.poolChanged }

// ParentGone is closed when the primary has gone. The worker should then stop
// accepting and exit within [OrphanGrace].
func (w *Worker) ParentGone() <-chan struct{} { return w.gone }

// Listener returns the socket this worker serves on: the primary's inherited
// socket, or a SO_REUSEPORT socket of its own.
func (w *Worker) Listener(ctx context.Context) (net.Listener, error) {
	switch mode, addr, _ := strings.Cut(w.listen, ":"); mode {
	case "fd":
		f := os.NewFile(listenerFD, "listener")
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("procpool: inherited listener on fd %d: %w", listenerFD, err)
		}
		if _, ok := ln.(*net.TCPListener); !ok {
			ln.Close()
			return nil, fmt.Errorf("procpool: inherited fd %d is a %T, not a TCP listener", listenerFD, ln)
		}
		if w.board != nil {
			w.board.accepting(w.entry).Store(1)
			return &balancedListener{Listener: ln, board: w.board, me: w.entry, sleep: time.Sleep}, nil
		}
		return ln, nil
	case "reuseport":
		return listenReusePort(ctx, addr)
	default:
		return nil, fmt.Errorf("procpool: bad %s %q", listenEnv, w.listen)
	}
}

// SetBusy tells the other workers of a shared socket whether this one
// refuses new work (its admission's predicted wait is over its bound): while
// it does, it lets a worker that is not busy accept new connections first,
// for at most the same 2 ms as the connection balance. Without the accept
// board (one worker, reuseport, --accept-balance off) it does nothing.
// Cheap enough to call every few milliseconds: it writes only on a change.
func (w *Worker) SetBusy(busy bool) {
	if w.board == nil {
		return
	}
	v := uint32(0)
	if busy {
		v = 1
	}
	if b := w.board.busy(w.entry); b.Load() != v {
		b.Store(v)
	}
}

// Ready tells the primary that this worker accepts connections. Call it once,
// after the server's accept loop runs.
// It reports this binary's version and build ([BuildInfo]).
func (w *Worker) Ready() error {
	v, b := BuildInfo()
	return w.send(message{Type: msgReady, Version: v, Build: b})
}

// Fatal tells the primary why this worker is about to exit with [ExitConfig].
func (w *Worker) Fatal(msg string) error { return w.send(message{Type: msgFatal, Message: msg}) }

// Heartbeat sends status() every interval until ctx is done or the primary is
// gone. Blocking.
func (w *Worker) Heartbeat(ctx context.Context, interval time.Duration, status func() Heartbeat) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if w.Beat(status()) != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-w.gone:
			return
		case <-t.C:
		}
	}
}

// Beat sends one heartbeat now: the last, after a drain, so that the
// primary's metrics count every request this worker served. A payload over
// [MaxMetrics] is left out.
func (w *Worker) Beat(hb Heartbeat) error {
	if len(hb.Metrics) > MaxMetrics {
		hb.Metrics = nil
	}
	return w.send(message{Type: msgHeartbeat, Beat: &hb})
}

func (w *Worker) send(m message) error {
	b, err := encodeMessage(m)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctrl.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.ctrl.Write(b); err != nil {
		return fmt.Errorf("procpool: send %s: %w", m.Type, err)
	}
	return nil
}

// Close closes the control channel.
func (w *Worker) Close() error {
	err := w.ctrl.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
