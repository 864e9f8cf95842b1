//go:build linux

package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
	"github.com/valyala/fasthttp"
)

// Cluster is what the admin endpoint needs of the supervisor.
type Cluster interface {
	Snapshot() procpool.Snapshot
	// Reload starts a rolling reload; procpool.ErrBusy while a reload or
	// an upgrade runs.
	Reload() error
	// Upgrade starts a new primary and returns once it serves, or once it
	// was rolled back (the error says why); procpool.ErrBusy while a
	// reload or an upgrade runs.
	Upgrade(ctx context.Context) error
	// Scale sets the number of workers.
	Scale(n int) error
	// SetPoolSize sets the task pool size of every worker.
	SetPoolSize(n int) error
}

// Admin is the primary's own small HTTP surface. It does no request work.
//
//	GET  /          the live dashboard (dashboard.html)
//	GET  /health    200, or 503 when degraded
//	GET  /cluster   the procpool.Snapshot
//	GET  /metrics   Prometheus text format (WithMetrics)
//	POST /reload    202: a rolling reload started
//	POST /upgrade   200 once a new primary serves; 502 rolled_back with the reason
//	POST /scale     {"workers":N}, N from 1 to the snapshot's workers_max: 202
//	POST /pool      {"size":N}, N from 1 to procpool.MaxPoolSize: 202
//	GET  /workers/{id}/debug/pprof/{profile}   worker id's net/http/pprof (--pprof)
//
// A POST that is busy (a reload or an upgrade runs) is a 409 busy.
//
// Security. A browser page can send a cross-site form POST to any address,
// loopback included, and cannot be told not to. So every POST, which changes
// the cluster, must carry either the admin token or [AdminHeader]: "1"
// and no Origin. A form cannot set a header, and a script on another origin
// that sets one must first ask by a CORS preflight, which the admin never
// grants (it sends no CORS header, ever); a browser sends Origin with every
// POST it makes, so a request with Origin is refused even with the header.
// Without a token, a TCP admin answers only requests whose Host is a
// loopback address or localhost, so that a page whose name was rebound to
// 127.0.0.1 (DNS rebinding) cannot reach it as its own origin. With a token
// (WithToken), every route but /health wants it as "Authorization: Bearer
// <token>"; it is compared in constant time. A refused call is a JSON 403
// (401 for a missing or wrong token).
type Admin struct {
	cluster Cluster
	log     *slog.Logger
	fs      *fasthttp.Server
	token   [sha256.Size]byte // the token's hash; zero without a token
	hasTok  bool
	metrics func([]byte) []byte // appends the Prometheus text; nil: no /metrics

	pprofClient *fasthttp.Client
	profMu      sync.Mutex
	profiling   map[int]bool // worker ids with a profile under way
}

// AdminHeader is the header that marks a state-changing admin call as not
// coming from a browser form.
const AdminHeader = "X-Hybrid-Admin"

// An AdminOption configures an [Admin].
type AdminOption func(*Admin)

// WithToken makes the admin endpoint want token as a bearer token on every
// route but /health. An empty token is none.
func WithToken(token string) AdminOption {
	return func(a *Admin) {
		if token != "" {
			a.token, a.hasTok = sha256.Sum256([]byte(token)), true
		}
	}
}

// WithMetrics serves GET /metrics (with /cluster's rules: the token where
// there is one): the Prometheus text format (version 0.0.4) that appendText
// appends to its argument.
func WithMetrics(appendText func([]byte) []byte) AdminOption {
	return func(a *Admin) { a.metrics = appendText }
}

// maxAdminBody bounds an admin request's body: {"workers":64} is 14 bytes.
const maxAdminBody = 1 << 10

// NewAdmin returns the admin server of cluster.
func NewAdmin(cluster Cluster, log *slog.Logger, opts ...AdminOption) *Admin {
	a := &Admin{cluster: cluster, log: log}
	for _, o := range opts {
		o(a)
	}
	r := NewRouter(log)
	r.Handle(fasthttp.MethodGet, "/", a.guard(a.dashboard, false, false))
	r.Handle(fasthttp.MethodGet, "/health", a.guard(a.health, false, false))
	r.Handle(fasthttp.MethodGet, "/cluster", a.guard(a.snapshot, true, false))
	if a.metrics != nil {
		r.Handle(fasthttp.MethodGet, "/metrics", a.guard(a.serveMetrics, true, false))
	}
	r.Handle(fasthttp.MethodPost, "/reload", a.guard(a.reload, true, true))
	r.Handle(fasthttp.MethodPost, "/upgrade", a.guard(a.upgrade, true, true))
	r.Handle(fasthttp.MethodPost, "/scale", a.guard(a.scale, true, true))
	r.Handle(fasthttp.MethodPost, "/pool", a.guard(a.pool, true, true))
	// A profile costs the worker (a 60 s trace, one at a time): a page on
	// another origin must not start one, so it wants the admin header as
	// the POSTs do.
	r.HandlePrefix(fasthttp.MethodGet, "/workers/", a.guard(a.pprof, true, true))
	a.profiling = map[int]bool{}
	a.pprofClient = &fasthttp.Client{
		NoDefaultUserAgentHeader: true,
		MaxResponseBodySize:      maxProfile,
		MaxConnsPerHost:          4,
	}
	cfg := DefaultConfig()
	cfg.MaxBody = maxAdminBody
	a.fs = newFastServer(cfg, r.Serve, log)
	return a
}

// Serve serves on ln until Shutdown. Blocking.
func (a *Admin) Serve(ln net.Listener) error { return a.fs.Serve(ln) }

// Shutdown stops the admin server.
func (a *Admin) Shutdown(ctx context.Context) error { return a.fs.ShutdownWithContext(ctx) }

// guard wraps h with the checks of the Admin doc: the Host (without a
// token), the token where tokened, and, where mutating, the proof that no
// browser form sent the request.
func (a *Admin) guard(h fasthttp.RequestHandler, tokened, mutating bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if err := a.check(ctx, tokened, mutating); err != nil {
			a.log.Warn("admin call refused", "path", string(ctx.Path()), "remote", ctx.RemoteAddr().String(), "why", err.Message)
			if err.Status == fasthttp.StatusUnauthorized {
				ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="hybrid admin"`)
			}
			WriteError(ctx, err)
			return
		}
		h(ctx)
	}
}

func (a *Admin) check(ctx *fasthttp.RequestCtx, tokened, mutating bool) *Error {
	if a.hasTok {
		if !tokened {
			return nil
		}
		// The scheme is case-insensitive (RFC 9110 11.1): bearer works too.
		scheme, tok, _ := strings.Cut(string(ctx.Request.Header.Peek("Authorization")), " ")
		sum := sha256.Sum256([]byte(strings.TrimLeft(tok, " ")))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], a.token[:]) != 1 {
			return Errorf(fasthttp.StatusUnauthorized, "unauthorized", "this admin endpoint wants its token: Authorization: Bearer <--admin-token>")
		}
		return nil
	}
	if _, tcp := ctx.LocalAddr().(*net.TCPAddr); tcp && !loopbackHost(string(ctx.Host())) {
		return Errorf(fasthttp.StatusForbidden, "forbidden", "Host must be a loopback address or localhost")
	}
	if !mutating {
		return nil
	}
	if string(ctx.Request.Header.Peek(AdminHeader)) != "1" || len(ctx.Request.Header.Peek("Origin")) > 0 {
		return Errorf(fasthttp.StatusForbidden, "forbidden", "a state-changing admin call needs the header %s: 1 and no Origin (browsers cannot send it); use the hybrid client", AdminHeader)
	}
	return nil
}

// loopbackHost reports whether host (a Host header: name or address, with
// or without a port) names this machine's loopback.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (a *Admin) snapshot(ctx *fasthttp.RequestCtx) {
	WriteJSON(ctx, fasthttp.StatusOK, a.cluster.Snapshot())
}

func (a *Admin) serveMetrics(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("text/plain; version=0.0.4; charset=utf-8")
	ctx.SetBody(a.metrics(nil))
}

func (a *Admin) health(ctx *fasthttp.RequestCtx) {
	snap := a.cluster.Snapshot()
	body := map[string]any{
		"status":         "ok",
		"primary_pid":    snap.PrimaryPID,
		"circuit":        snap.Circuit,
		"workers_ready":  snap.WorkersReady,
		"workers_wanted": snap.WorkersWanted,
	}
	ok, reason := snap.Health()
	if !ok {
		body["status"], body["reason"] = "degraded", reason
		WriteJSON(ctx, fasthttp.StatusServiceUnavailable, body)
		return
	}
	WriteJSON(ctx, fasthttp.StatusOK, body)
}

func (a *Admin) reload(ctx *fasthttp.RequestCtx) {
	a.log.Info("reload requested over the admin endpoint", "remote", ctx.RemoteAddr().String())
	if err := a.cluster.Reload(); err != nil {
		WriteError(ctx, clusterError("reload", err))
		return
	}
	WriteJSON(ctx, fasthttp.StatusAccepted, map[string]string{"status": "reloading"})
}

func (a *Admin) upgrade(ctx *fasthttp.RequestCtx) {
	a.log.Info("upgrade requested over the admin endpoint", "remote", ctx.RemoteAddr().String())
	if err := a.cluster.Upgrade(ctx); err != nil {
		WriteError(ctx, clusterError("upgrade", err))
		return
	}
	WriteJSON(ctx, fasthttp.StatusOK, map[string]string{"status": "upgraded"})
}

// maxAdminCount bounds the numbers /scale takes from a cluster that does
// not tell its workers_max.
const maxAdminCount = 1 << 12

func (a *Admin) scale(ctx *fasthttp.RequestCtx) {
	most := a.cluster.Snapshot().WorkersMax
	if most <= 0 {
		most = maxAdminCount
	}
	n, err := decodeCount(ctx.PostBody(), "workers", 1, most)
	if err != nil {
		WriteError(ctx, err)
		return
	}
	a.log.Info("scale requested over the admin endpoint", "workers", n, "remote", ctx.RemoteAddr().String())
	if err := a.cluster.Scale(n); err != nil {
		WriteError(ctx, clusterError("scale", err))
		return
	}
	WriteJSON(ctx, fasthttp.StatusAccepted, map[string]any{"status": "scaling", "workers": n})
}

func (a *Admin) pool(ctx *fasthttp.RequestCtx) {
	n, err := decodeCount(ctx.PostBody(), "size", 1, procpool.MaxPoolSize)
	if err != nil {
		WriteError(ctx, err)
		return
	}
	a.log.Info("pool size requested over the admin endpoint", "size", n, "remote", ctx.RemoteAddr().String())
	if err := a.cluster.SetPoolSize(n); err != nil {
		WriteError(ctx, clusterError("pool", err))
		return
	}
	WriteJSON(ctx, fasthttp.StatusAccepted, map[string]any{"status": "resizing", "size": n})
}

// clusterError is the admin's answer to err from the cluster's op (reload,
// upgrade, scale, pool), one place for every procpool error: 409 busy
// (with the reason: a reload, an upgrade, or the old primary's drain), 400
// for an argument out of range, 502 rolled_back, 501 for an upgrade a PID 1
// primary cannot do, 503 while shutting down; an *Error as it is; else 500.
// Each message is the error's text: the admin's caller is the operator,
// and the text is the reason.
func clusterError(op string, err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, procpool.ErrBusy):
		// The reason ("upgrade refused: a reload is running"), without the
		// sentinel's own text, which says it again in general.
		msg := strings.TrimSuffix(err.Error(), ": "+procpool.ErrBusy.Error())
		if err == procpool.ErrBusy { //nolint:errorlint // the bare sentinel: no reason given
			msg = "a reload or upgrade is already running"
		}
		return Errorf(fasthttp.StatusConflict, "busy", "%s", msg)
	case errors.Is(err, procpool.ErrInvalid):
		return Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "%s: %v", op, err)
	case errors.Is(err, procpool.ErrRolledBack):
		return Errorf(fasthttp.StatusBadGateway, "rolled_back", "%v", err)
	case errors.Is(err, procpool.ErrUnsupported):
		return Errorf(fasthttp.StatusNotImplemented, "unsupported", "%s: %v", op, err)
	case errors.Is(err, procpool.ErrStopped):
		return Errorf(fasthttp.StatusServiceUnavailable, "shutting_down", "%s: %v", op, err)
	}
	return Errorf(fasthttp.StatusInternalServerError, CodeInternal, "%s: %v", op, err)
}

// decodeCount reads body, exactly {"<key>": N} with N an integer from least
// to most, and nothing else: no other key, no repeat, no trailing data.
// Anything else is a 400 bad_request.
func decodeCount(body []byte, key string, least, most int) (int, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	next := func() any {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		return tok
	}
	ok := next() == json.Delim('{') && next() == key
	num, isNum := next().(json.Number)
	ok = ok && isNum && next() == json.Delim('}') && next() == io.EOF
	n, err := strconv.Atoi(string(num))
	if !ok || err != nil || n < least || n > most {
		return 0, Errorf(fasthttp.StatusBadRequest, CodeBadRequest, `want the body {"%s": N}, N from %d to %d`, key, least, most)
	}
	return n, nil
}

// CheckAdminAddr refuses an admin address that would expose the endpoint
// without a token: an address not on loopback (a wildcard, another
// interface, a host name) wants one. "off" and a unix socket
// ("unix:/path", created 0600) do not.
//
// It refuses a token that HTTP cannot carry as it is (CheckAdminToken).
func CheckAdminAddr(addr, token string) error {
	if err := CheckAdminToken(token); err != nil {
		return err
	}
	if addr == "off" || strings.HasPrefix(addr, "unix:") || token != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin-addr %q: want host:port, unix:/path or off", addr)
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("admin-addr %s is not on loopback: set --admin-token (HYBRID_ADMIN_TOKEN), or use 127.0.0.1:port or unix:/path", addr)
}

// CheckAdminToken refuses an admin token that no request could present:
// one with leading or trailing whitespace, which HTTP strips from a header
// value, or with a control byte, which a header cannot hold. The error does
// not quote the token, a secret.
func CheckAdminToken(token string) error {
	if strings.TrimSpace(token) != token {
		return errors.New("admin-token: begins or ends with whitespace, which HTTP strips from the Authorization header: no request could match it")
	}
	if strings.ContainsFunc(token, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return errors.New("admin-token: holds a control character, which an HTTP header cannot carry")
	}
	return nil
}

// ListenAdmin listens on addr: host:port (TCP), or unix:/path, a unix
// socket created with mode 0600 (a stale socket file left by a killed
// primary is replaced; a live one is an error). Closing a unix listener
// removes its file.
func ListenAdmin(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, fmt.Errorf("admin-addr %q: want unix:/path", addr)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: another process serves it", path)
		}
		os.Remove(path)
	}
	// The umask makes the socket 0600 from its creation: a chmod after the
	// bind would leave a moment in which anyone could connect. The umask
	// is the process's: call ListenAdmin while no other goroutine creates
	// files (the primary does, before it starts its workers).
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	return ln, nil
}

// KeepAdminSocket makes closing ln, an admin listener handed over to an
// upgrade's new primary, leave its unix socket file in place: the new
// primary serves on it now. A TCP listener is left as it is.
func KeepAdminSocket(ln net.Listener) {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
}

// RemoveAdminSocketOnClose makes closing ln, a unix admin listener an
// upgrade handed to this process, remove its file, as closing one of
// ListenAdmin's own does: the primary that serves it last removes it. (A
// listener made from an inherited descriptor leaves its file by default.)
// A TCP listener is left as it is.
func RemoveAdminSocketOnClose(ln net.Listener) {
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(true)
	}
}

// pprofProfiles are the profiles GET /workers/{id}/debug/pprof/{profile}
// passes on ("": the index).
var pprofProfiles = map[string]bool{"": true, "cmdline": true, "profile": true, "symbol": true, "trace": true,
	"goroutine": true, "heap": true, "allocs": true, "block": true, "mutex": true, "threadcreate": true}

// Bounds of a proxied profile: its ?seconds= and its size.
const (
	maxProfileSeconds = 60
	maxProfile        = 64 << 20
)

// pprof proxies GET /workers/{id}/debug/pprof/{profile}[?seconds=N&debug=N&gc=N]
// to worker id's loopback pprof server (the worker's --pprof; see
// cmd/hybrid's servePprof): 404 for a worker not running or without one,
// and for an unknown profile; 400 for ?seconds= out of 1 to 60 (or ?debug=
// out of 0 to 2, ?gc= out of 0 to 1); 409 busy while
// another profile of the worker runs, 502 if the worker does not answer.
// Only those three query parameters pass.
func (a *Admin) pprof(ctx *fasthttp.RequestCtx) {
	rest := PathParam(ctx, "/workers/")
	idText, profile, ok := strings.Cut(rest, "/debug/pprof/")
	id, err := strconv.Atoi(idText)
	if !ok || err != nil || id < 0 {
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "want /workers/{id}/debug/pprof/{profile}"))
		return
	}
	if !pprofProfiles[profile] {
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "no profile %q", profile))
		return
	}
	q := ctx.QueryArgs()
	var query []byte
	wait := 30 * time.Second // pprof's own default for profile
	for _, p := range [...]struct {
		name     string
		most     int
		duration bool
	}{{"seconds", maxProfileSeconds, true}, {"debug", 2, false}, {"gc", 1, false}} {
		v := q.Peek(p.name)
		if v == nil {
			continue
		}
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 0 || n > p.most || p.duration && n == 0 {
			WriteError(ctx, Errorf(fasthttp.StatusBadRequest, CodeBadRequest, "%s: want an integer from %d to %d", p.name, min(1, p.most), p.most))
			return
		}
		if p.duration {
			wait = time.Duration(n) * time.Second
		}
		query = strconv.AppendInt(append(append(append(query, '&'), p.name...), '='), int64(n), 10)
	}
	base := ""
	found := false
	for _, w := range a.cluster.Snapshot().Workers {
		if w.ID == id && w.State == procpool.StateReady {
			found, base = true, w.Pprof
		}
	}
	switch {
	case !found:
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "no worker %d is ready", id))
		return
	case !loopbackPprof(base):
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "worker %d serves no profiles: start hybrid serve with --pprof", id))
		return
	}
	a.profMu.Lock()
	busy := a.profiling[id]
	a.profiling[id] = true
	a.profMu.Unlock()
	if busy {
		WriteError(ctx, Errorf(fasthttp.StatusConflict, "busy", "a profile of worker %d is under way; one at a time", id))
		return
	}
	defer func() {
		a.profMu.Lock()
		delete(a.profiling, id)
		a.profMu.Unlock()
	}()
	url := base + "/debug/pprof/" + profile
	if len(query) > 0 {
		query[0] = '?'
		url += string(query)
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	a.log.Info("profile requested over the admin endpoint", "worker", id, "profile", profile,
		"query", strings.TrimPrefix(string(query), "?"), "remote", ctx.RemoteAddr().String())
	if err := a.pprofClient.DoTimeout(req, resp, wait+15*time.Second); err != nil {
		WriteError(ctx, Errorf(fasthttp.StatusBadGateway, "bad_gateway", "worker %d: %v", id, err))
		return
	}
	ctx.SetStatusCode(resp.StatusCode())
	for _, h := range [...]string{"Content-Type", "Content-Disposition", "X-Content-Type-Options"} {
		if v := resp.Header.Peek(h); len(v) > 0 {
			ctx.Response.Header.SetBytesV(h, v)
		}
	}
	ctx.SetBody(resp.Body())
}

// loopbackPprof reports whether base, a worker's pprof address from its
// heartbeat, is plainly http://127.0.0.1:PORT/PATH: no userinfo (which a
// client would read as the host's prefix), no other host.
func loopbackPprof(base string) bool {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Hostname() != "127.0.0.1" || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	port, err := strconv.Atoi(u.Port())
	return err == nil && port > 0 && port < 65536 && strings.HasPrefix(u.Path, "/")
}
