package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// expects reports whether the target asks for 100 Continue: then the load
// generator behaves as a client that honours it (curl, for bodies over
// 1 MiB) instead of fasthttp's, which sends the body at once.
func (t Target) expects() bool {
	for _, h := range t.Header {
		if strings.EqualFold(h[0], "Expect") && strings.EqualFold(strings.TrimSpace(h[1]), "100-continue") {
			return true
		}
	}
	return false
}

// expectConn is one connection of a client that honours Expect:
// 100-continue: it sends the headers, waits for the interim 100 or the
// final answer, and sends the body only after 100 Continue. A final answer
// instead of 100 ends the connection, as the server closes it. A server that
// does not answer the headers gets the body after expectWait, as curl does.
type expectConn struct {
	addr    string
	head    []byte // request line and headers, Content-Length included
	body    []byte
	close   bool // Connection: close on every request
	timeout time.Duration

	conn net.Conn
	br   *bufio.Reader
}

// expectWait is how long a client waits for 100 Continue before it sends
// the body anyway (curl's default, --expect100-timeout).
const expectWait = time.Second

func newExpectConn(t Target, addr string, newConn bool, timeout time.Duration) (*expectConn, error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: hybrid-bench\r\n", t.Method, u.RequestURI(), u.Host)
	for _, h := range t.Header {
		if strings.EqualFold(h[0], "Content-Length") || strings.EqualFold(h[0], "Host") {
			continue
		}
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("Content-Length: " + strconv.Itoa(len(t.Body)) + "\r\n")
	if newConn {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
	return &expectConn{addr: addr, head: b.Bytes(), body: t.Body, close: newConn, timeout: timeout}, nil
}

// do sends the request once and reads its final response into resp.
func (e *expectConn) do(resp *fasthttp.Response) error {
	if e.conn == nil {
		c, err := net.DialTimeout("tcp", e.addr, e.timeout)
		if err != nil {
			return err
		}
		e.conn, e.br = c, bufio.NewReaderSize(c, 16<<10)
	}
	err := e.exchange(resp)
	if err != nil || e.close || resp.ConnectionClose() {
		e.conn.Close()
		e.conn = nil
	}
	return err
}

func (e *expectConn) exchange(resp *fasthttp.Response) error {
	deadline := time.Now().Add(e.timeout)
	e.conn.SetDeadline(deadline)
	if _, err := e.conn.Write(e.head); err != nil {
		return err
	}
	e.conn.SetReadDeadline(time.Now().Add(min(expectWait, e.timeout)))
	status, err := e.br.Peek(len("HTTP/1.1 100"))
	var ne net.Error
	switch {
	case err == nil && string(status[9:]) == "100":
		if err := skipHeader(e.br); err != nil {
			return err
		}
	case err == nil:
		// The final answer from the headers: the body is not wanted.
		e.conn.SetReadDeadline(deadline)
		return resp.ReadLimitBody(e.br, 1<<30)
	case errors.As(err, &ne) && ne.Timeout():
		// No answer to the headers: send the body anyway.
	default:
		return err
	}
	e.conn.SetDeadline(deadline)
	if _, err := e.conn.Write(e.body); err != nil {
		return err
	}
	return resp.ReadLimitBody(e.br, 1<<30)
}

// skipHeader reads an interim response's header through its empty line.
func skipHeader(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}
