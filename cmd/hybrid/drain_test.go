package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// keepAliveLoad is what wrk and load balancers do: each client holds one
// connection and sends its requests on it one after another, opening a new
// one only when the server closes it (Connection: close) or it fails. It
// never retries: a request written on an established connection that gets
// no complete response is a failure. (Go's http.Transport would retry an
// idempotent request on a connection closed while idle, and so hide exactly
// the failure these tests look for.)
type keepAliveLoad struct {
	ok       atomic.Int64 // 200 responses
	failed   atomic.Int64 // written on an established connection, no 200 back
	closes   atomic.Int64 // responses that said Connection: close
	dials    atomic.Int64 // connections established
	dialErrs atomic.Int64 // connects that failed: no request was sent on them

	mu     sync.Mutex
	errs   map[string]int
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// A request as it goes on the wire, with its name for the error report.
type rawRequest struct {
	name string
	wire []byte
}

func getRequest(path string) rawRequest {
	return rawRequest{"GET " + path, []byte("GET " + path + " HTTP/1.1\r\nHost: hybrid\r\n\r\n")}
}

func postRequest(path string, body []byte) rawRequest {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: hybrid\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", path, len(body))
	b.Write(body)
	return rawRequest{"POST " + path, b.Bytes()}
}

// startKeepAlive runs clients connections to addr until stop; client i
// sends reqs in turn, starting at reqs[i%len(reqs)].
func startKeepAlive(addr string, clients int, reqs []rawRequest) *keepAliveLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &keepAliveLoad{cancel: cancel, errs: map[string]int{}}
	for i := range clients {
		l.done.Go(func() { l.client(ctx, addr, reqs, i) })
	}
	return l
}

func (l *keepAliveLoad) client(ctx context.Context, addr string, reqs []rawRequest, next int) {
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				l.dialErrs.Add(1)
				time.Sleep(20 * time.Millisecond)
				continue
			}
			l.dials.Add(1)
			conn, br = c, bufio.NewReader(c)
		}
		req := reqs[next%len(reqs)]
		next++
		keep, step, err := roundTrip(conn, br, req.wire)
		if err != nil {
			l.failed.Add(1)
			l.mu.Lock()
			l.errs[req.name+": "+step+": "+errText(err)]++
			l.mu.Unlock()
		} else {
			l.ok.Add(1)
		}
		if err != nil || !keep {
			if err == nil {
				l.closes.Add(1)
			}
			conn.Close()
			conn = nil
		}
	}
}

// roundTrip writes one request and reads its whole response, which must be
// a 200; keep is whether the connection may carry the next request, and
// step names where it failed.
func roundTrip(conn net.Conn, br *bufio.Reader, wire []byte) (keep bool, step string, err error) {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(wire); err != nil {
		return false, "write", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false, "read", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, "read body", err
	}
	if resp.StatusCode != http.StatusOK {
		return !resp.Close, "status", fmt.Errorf("%d %.80q", resp.StatusCode, body)
	}
	return !resp.Close, "", nil
}

// errText shortens an error to what tells failures apart: the syscall
// error, not the addresses.
func errText(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return fmt.Sprintf("%s", errno)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	}
	return err.Error()
}

type loadResult struct {
	ok, failed, closes, dials, dialErrs int64
	errs                                []string
}

func (r loadResult) String() string {
	return fmt.Sprintf("%d ok, %d failed, %d connections opened, %d closed by Connection: close, %d connects failed %v",
		r.ok, r.failed, r.dials, r.closes, r.dialErrs, r.errs)
}

func (l *keepAliveLoad) stop() loadResult {
	l.cancel()
	l.done.Wait()
	r := loadResult{ok: l.ok.Load(), failed: l.failed.Load(), closes: l.closes.Load(),
		dials: l.dials.Load(), dialErrs: l.dialErrs.Load()}
	for e, n := range l.errs {
		r.errs = append(r.errs, fmt.Sprintf("%dx %s", n, e))
	}
	sort.Strings(r.errs)
	return r
}

// drainLoad is the load of the drain tests: 64 keep-alive connections, half
// starting with GET /health, half with a 1 KiB POST /v1/hash/sha256, each
// alternating the two.
func drainLoad(addr string) *keepAliveLoad {
	body := bytes.Repeat([]byte("hybrid!\n"), 128)
	return startKeepAlive(addr, 64, []rawRequest{getRequest("/health"), postRequest("/v1/hash/sha256", body)})
}

// drainFlags are the defaults but for two workers: default admission (by
// predicted wait) queues 64 connections' worth of small hashes, and a 503
// would count as a failure here.
var drainFlags = []string{"--workers", "2"}

// Twenty rolling reloads under 64 keep-alive connections lose no request:
// a draining worker ends each connection at a request boundary
// (Connection: close on its next response), and the client's next
// connection lands on a new worker through the shared socket.
func TestReloadKeepAliveNoFailures(t *testing.T) {
	c := startCluster(t, nil, 2, drainFlags...)
	l := drainLoad(c.addr)
	start := time.Now()
	const reloads = 20
	for i := range reloads {
		time.Sleep(100 * time.Millisecond)
		c.signal(syscall.SIGHUP)
		c.waitFor(20*time.Second, fmt.Sprintf("reload %d to complete", i+1), func() bool {
			s := c.snapshot()
			return !s.Reloading && s.WorkersReady == 2 && len(s.Workers) == 2
		})
	}
	time.Sleep(100 * time.Millisecond)
	r := l.stop()
	t.Logf("%d reloads in %v under 64 keep-alive connections: %v", reloads, time.Since(start).Round(time.Millisecond), r)
	if r.failed != 0 {
		t.Errorf("%d requests failed across %d reloads; want 0: %v", r.failed, reloads, r.errs)
	}
	if r.ok < 1000 {
		t.Errorf("only %d requests succeeded; the load did not run", r.ok)
	}
	if r.closes < 2*reloads {
		t.Errorf("only %d responses said Connection: close across %d reloads: the connections were not kept alive, or the drain did not end them at a request", r.closes, reloads)
	}
	if s := c.snapshot(); s.CrashesInWindow != 0 {
		t.Errorf("a reload counted %d crashes; want 0", s.CrashesInWindow)
	}
}

// SIGTERM under 64 keep-alive connections, and 16 more clients that open a
// new connection for every request: every request written on a connection
// that was established gets its response, and the primary exits 0.
//
// "In flight" is a request on a connection the kernel completed: one a
// worker accepted, and one still in the shared socket's accept queue when
// the workers stop accepting. The workers serve the first kind to the end,
// and take the second kind from the queue before they close (without that,
// the last close of the socket resets them: 2 to 25 per SIGTERM here).
// Connects refused once the socket is closed are no request's failure:
// nothing was sent on them.
func TestShutdownKeepAliveNoFailures(t *testing.T) {
	c := startCluster(t, nil, 2, drainFlags...)
	l := drainLoad(c.addr)
	churn := startKeepAlive(c.addr, 16, []rawRequest{{"GET /health (Connection: close)",
		[]byte("GET /health HTTP/1.1\r\nHost: hybrid\r\nConnection: close\r\n\r\n")}})
	time.Sleep(time.Second)
	before := l.ok.Load()
	start := time.Now()
	c.signal(syscall.SIGTERM)
	code := c.wait(20 * time.Second)
	took := time.Since(start)
	r, rc := l.stop(), churn.stop()
	t.Logf("SIGTERM under 64 keep-alive connections (%d requests before it): exit %d after %v; %v",
		before, code, took.Round(time.Millisecond), r)
	t.Logf("and 16 clients with a connection per request: %v", rc)
	if code != 0 {
		t.Errorf("primary exit code = %d; want 0", code)
	}
	if r.failed != 0 {
		t.Errorf("%d requests on established keep-alive connections failed across SIGTERM; want 0: %v", r.failed, r.errs)
	}
	if rc.failed != 0 {
		t.Errorf("%d requests on new connections failed across SIGTERM; want 0: %v", rc.failed, rc.errs)
	}
	if before < 200 {
		t.Errorf("only %d requests before SIGTERM; the load did not run", before)
	}
	if r.closes < 64 {
		t.Errorf("only %d responses said Connection: close; want one per connection open at SIGTERM (64)", r.closes)
	}
}
