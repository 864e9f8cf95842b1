package server

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/valyala/fasthttp"
)

// AccessLog writes one JSON line per request answered (Server.done):
//
//	{"time":"2026-01-02T15:04:05.000Z","msg":"access","method":"POST",
//	 "path":"/v1/hash/sha256","status":200,"bytes":71,"duration":0.000412,
//	 "mode":"pool","worker":1,"remote":"10.0.0.7:51234","request_id":"…"}
//
// time is when the request's headers were read (fasthttp's ctx.Time), UTC;
// path is the raw request target without its query (a query may carry
// credentials), at most [MaxLogPath] bytes of it, JSON-escaped: a client's
// newline or quote cannot start a line of its own; bytes is the response
// body's size as sent (after compression); duration is in seconds; mode is
// where the workload ran ("" for none).
//
// Each line is one write(2) of at most a few KiB to a file opened with
// O_APPEND: the kernel appends it whole, so the workers of a cluster may
// share one file without interleaving their lines.
type AccessLog struct {
	f       *os.File
	own     bool // f was opened here: Close closes it
	failed  atomic.Bool
	onError func(error) // told of the first failed write
}

// MaxLogPath bounds the request path an access-log line carries: escaped
// at its worst (6 bytes a byte), a line stays under 4 KiB.
const MaxLogPath = 512

// maxLogMethod bounds the method an access-log line carries.
const maxLogMethod = 16

// OpenAccessLog opens the access log dest names: "off" (nil, nil),
// "stderr", or the path of a file, created 0640 if need be and appended to.
// onError, if not nil, is told of the first write that fails (a full disk):
// the log goes on trying, and the request path never waits on it.
func OpenAccessLog(dest string, onError func(error)) (*AccessLog, error) {
	switch dest {
	case "off":
		return nil, nil
	case "":
		return nil, errors.New("access-log: want off, stderr or a file path")
	case "stderr":
		return &AccessLog{f: os.Stderr, onError: onError}, nil
	}
	f, err := os.OpenFile(dest, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("access-log: %w", err)
	}
	return &AccessLog{f: f, own: true, onError: onError}, nil
}

// Close closes the log's file (not stderr).
func (l *AccessLog) Close() error {
	if l == nil || !l.own {
		return nil
	}
	return l.f.Close()
}

// logBufs hold access-log lines while they are built.
var logBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// write logs one request.
func (l *AccessLog) write(ctx *fasthttp.RequestCtx, id []byte, mode metrics.Mode, took time.Duration, worker int) {
	bp := logBufs.Get().(*[]byte)
	o := jsonw.Open((*bp)[:0])
	o.Key("time")
	o.B = append(ctx.Time().UTC().AppendFormat(append(o.B, '"'), "2006-01-02T15:04:05.000Z07:00"), '"')
	o.String("msg", "access")
	o.Key("method")
	o.B = appendCapped(o.B, ctx.Method(), maxLogMethod)
	o.Key("path")
	uri := ctx.Request.Header.RequestURI()
	for i, c := range uri {
		if c == '?' {
			uri = uri[:i]
			break
		}
	}
	// An absolute-form target (http://user:pass@host/p) logs its path
	// only: userinfo may be a credential, as a query may.
	if len(uri) > 0 && uri[0] != '/' {
		if i := bytes.Index(uri, []byte("://")); i >= 0 {
			rest := uri[i+3:]
			if j := bytes.IndexByte(rest, '/'); j >= 0 {
				uri = rest[j:]
			} else {
				uri = uri[:0]
			}
		}
	}
	o.B = appendCapped(o.B, uri, MaxLogPath)
	o.Int("status", int64(ctx.Response.StatusCode()))
	o.Int("bytes", int64(len(ctx.Response.Body())))
	o.Float("duration", took.Seconds())
	o.Key("mode")
	o.B = append(append(append(o.B, '"'), modeName(mode)...), '"')
	o.Int("worker", int64(worker))
	o.Key("remote")
	o.B = appendRemote(o.B, ctx.RemoteAddr())
	o.Key("request_id")
	o.B = append(append(append(o.B, '"'), id...), '"') // a safe charset: see requestID
	b := append(o.Close(), '\n')
	if _, err := l.f.Write(b); err != nil && l.failed.CompareAndSwap(false, true) && l.onError != nil {
		l.onError(err)
	}
	*bp = b
	logBufs.Put(bp)
}

// appendCapped appends at most limit bytes of p as a JSON string.
func appendCapped(b, p []byte, limit int) []byte {
	if len(p) > limit {
		p = p[:limit]
	}
	// AppendString reads s and keeps nothing of it: no copy is needed.
	return jsonw.AppendString(b, unsafe.String(unsafe.SliceData(p), len(p)))
}

// appendRemote appends a client address as a JSON string, "ip:port",
// without allocating for a TCP one.
func appendRemote(b []byte, a net.Addr) []byte {
	b = append(b, '"')
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		if ip := ap.Addr(); ip.Is4In6() {
			ap = netip.AddrPortFrom(ip.Unmap(), ap.Port())
		}
		b = ap.AppendTo(b)
	} else if a != nil {
		return jsonw.AppendString(b[:len(b)-1], a.String())
	}
	return append(b, '"')
}

func modeName(m metrics.Mode) string {
	switch m {
	case metrics.ModeInline:
		return "inline"
	case metrics.ModePool:
		return "pool"
	case metrics.ModeIsolate:
		return "isolate"
	}
	return ""
}

// RequestIDHeader is the header that carries a request's id, in and out.
const RequestIDHeader = "X-Request-ID"

// maxRequestID bounds a client's request id that the server honours.
const maxRequestID = 64

// requestIDs generates request ids: a random 64-bit salt, drawn once per
// server, and a counter, as 32 hex digits. Unique within a worker's life,
// and across workers and restarts but for a 2⁻⁶⁴ chance; no per-request
// randomness.
type requestIDs struct {
	salt [8]byte
	seq  atomic.Uint64
}

func (g *requestIDs) init() { rand.Read(g.salt[:]) }

// requestID returns the request's id: its X-Request-ID if that is 1 to 64
// of [A-Za-z0-9._-], else one generated into buf.
func (g *requestIDs) requestID(ctx *fasthttp.RequestCtx, buf *[32]byte) []byte {
	if id := ctx.Request.Header.Peek(RequestIDHeader); validRequestID(id) {
		return id
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], g.seq.Add(1))
	hex.Encode(buf[:16], g.salt[:])
	hex.Encode(buf[16:], n[:])
	return buf[:]
}

func validRequestID(id []byte) bool {
	if len(id) == 0 || len(id) > maxRequestID {
		return false
	}
	for _, c := range id {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
