package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/valyala/fasthttp"
)

// Config holds a worker server's limits. Zero fields take the defaults of
// [DefaultConfig].
type Config struct {
	// MaxBody is the largest request body accepted; larger ones get 413.
	MaxBody int
	// ReadTimeout bounds reading one request, headers and body.
	ReadTimeout time.Duration
	// BodyIdleTimeout ends a request body that sends nothing for this
	// long with 408 (body.go): what a client that stalls holds of the
	// worker's budget of bodies in flight, it holds this long at most.
	// Zero is 10 s (nginx's client_body_timeout, the same bound between
	// two reads, defaults to 60 s); ReadTimeout still bounds the whole
	// request.
	BodyIdleTimeout time.Duration
	// WriteTimeout bounds writing one response.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection.
	IdleTimeout time.Duration
	// DrainGrace is how long a keep-alive connection may stay idle during
	// a drain before the drain closes it (see [Server.Shutdown]).
	DrainGrace time.Duration
	// MaxInflightBody is the worker's budget of request-body bytes in
	// flight: read, being read, or held by a handler (see body.go). A
	// body reserves its buffer as its bytes arrive, and one whose next
	// step does not fit gets 503 overloaded. Zero
	// is 4 × MaxBody (128 MiB by default): bodies of the largest size for
	// the tasks a worker runs at once (one or two cores' worth) and as
	// many uploading behind them, so that the worker's memory is its
	// baseline plus this, however many clients upload or stall at once.
	// At least 2 × MaxBody, or one large upload would refuse every other.
	MaxInflightBody int
	// MaxConns bounds the connections a worker serves at once; one over it
	// is answered 503 too_many_connections (JSON, Retry-After) and closed.
	// Each costs its buffers, its goroutine and fasthttp's request state,
	// some 20–30 KiB while open: the default of 4096 ([DefaultMaxConns])
	// bounds that near 100 MiB per worker, far above what a compute
	// worker's cores keep busy, and leaves room for the keep-alive pools
	// of many load balancers.
	MaxConns int
	// MaxConnsPerIP bounds the connections a worker serves at once from one
	// client address; one over it is answered 429 too_many_connections and
	// closed. Zero, the default, is no limit: behind a load balancer, a
	// proxy or a NAT every client shares one address, and any limit would
	// cap them all together. Set it when clients reach the workers
	// directly. The count is per worker, so a client may hold up to this
	// many connections on each.
	MaxConnsPerIP int
}

// DefaultMaxConns is the default Config.MaxConns.
const DefaultMaxConns = 4096

// DefaultConfig returns the limits hybrid serve uses without flags.
func DefaultConfig() Config {
	return Config{
		MaxBody:         32 << 20,
		ReadTimeout:     30 * time.Second,
		BodyIdleTimeout: 10 * time.Second,
		WriteTimeout:    30 * time.Second,
		IdleTimeout:     60 * time.Second,
		DrainGrace:      DefaultDrainGrace,
		MaxConns:        DefaultMaxConns,
	}
}

// DefaultDrainGrace is the default Config.DrainGrace. A client that keeps
// a connection busy sends its next request well within a second, and gets
// Connection: close on it; a connection quiet for a second is most likely
// a pool's spare, and closing it races a client's send only if the send
// starts in the instant of the close. A longer grace would lengthen every
// reload's overlap of old and new workers for little gain.
const DefaultDrainGrace = time.Second

// Validate reports the first invalid limit.
func (c Config) Validate() error {
	switch d := c.withDefaults(); {
	case c.MaxBody < 0:
		return fmt.Errorf("server: max body %d: want a positive size", c.MaxBody)
	case c.ReadTimeout < 0 || c.WriteTimeout < 0 || c.IdleTimeout < 0 || c.DrainGrace < 0 || c.BodyIdleTimeout < 0:
		return fmt.Errorf("server: timeouts must be positive")
	case c.MaxInflightBody < 0 || (c.MaxInflightBody > 0 && c.MaxInflightBody < 2*d.MaxBody):
		return fmt.Errorf("server: max in-flight body %d: want at least twice the max body (%d), or 0 for 4 times it",
			c.MaxInflightBody, d.MaxBody)
	case c.MaxConns < 0 || c.MaxConnsPerIP < 0:
		return fmt.Errorf("server: connection limits must be positive (max conns per IP: 0 for none)")
	}
	return nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxBody == 0 {
		c.MaxBody = d.MaxBody
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = d.ReadTimeout
	}
	if c.BodyIdleTimeout == 0 {
		c.BodyIdleTimeout = d.BodyIdleTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.DrainGrace == 0 {
		c.DrainGrace = d.DrainGrace
	}
	if c.MaxInflightBody == 0 {
		c.MaxInflightBody = 4 * c.MaxBody
	}
	if c.MaxConns == 0 {
		c.MaxConns = d.MaxConns
	}
	return c
}

// Stats are a worker server's counters.
type Stats struct {
	Requests   uint64
	InFlight   int64
	RSS        uint64
	Goroutines int
}

// Server is one worker's HTTP server. Register routes on Router before Serve.
type Server struct {
	Router *Router

	log      *slog.Logger
	workerID int
	pid      int
	maxBody  int
	started  time.Time
	fs       *fasthttp.Server
	grace    time.Duration

	conns     conns
	mu        sync.Mutex
	listeners []*listener
	serving   sync.WaitGroup // Serve calls under way

	closedAfterResponse atomic.Int64 // responses a drain marked Connection: close

	requests  atomic.Uint64
	inFlight  atomic.Int64
	metrics   metrics.Requests
	unmatched *metrics.Route // the metrics of requests no route took
	rss       rssSampler
	extras    []healthSection // sorted by key
	readyJSON []byte          // the /ready body: its figures never change
	draining  atomic.Bool
	accessLog *AccessLog // nil: off
	ids       requestIDs
	accepting chan struct{}
	acceptOne sync.Once
}

// New returns a server for worker workerID with /health and /ready
// registered.
func New(cfg Config, log *slog.Logger, workerID int) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		Router:    NewRouter(log),
		log:       log,
		workerID:  workerID,
		pid:       os.Getpid(),
		started:   time.Now(),
		accepting: make(chan struct{}),
		grace:     cfg.DrainGrace,
	}
	s.conns.readTimeout = cfg.ReadTimeout
	s.conns.bodyIdle = cfg.BodyIdleTimeout
	s.conns.lingerBytes = 2 * cfg.MaxBody
	s.conns.bodies = &bodyBudget{limit: int64(cfg.MaxInflightBody)}
	s.conns.maxConns, s.conns.maxPerIP = cfg.MaxConns, cfg.MaxConnsPerIP
	s.conns.refusals = [2][]byte{
		refusalOf(Errorf(fasthttp.StatusServiceUnavailable, CodeTooManyConns,
			"this worker serves its limit of %d connections; retry", cfg.MaxConns)),
		refusalOf(Errorf(fasthttp.StatusTooManyRequests, CodeTooManyConns,
			"this worker serves its limit of %d connections from one address", cfg.MaxConnsPerIP)),
	}
	s.ids.init()
	s.Router.metrics = &s.metrics
	s.unmatched = s.metrics.Route(metrics.Unmatched)
	s.readyJSON = readyDoc(os.Getpid(), workerID)
	s.maxBody = cfg.MaxBody
	s.fs = newFastServer(cfg, s.serve, log)
	s.fs.StreamRequestBody = true // handlers read the body with Body, or refuse before it (body.go)
	s.fs.ExpectHandler = s.expect
	s.Router.Handle(fasthttp.MethodGet, "/health", s.health)
	s.Router.Handle(fasthttp.MethodGet, "/ready", s.ready)
	return s
}

func newFastServer(cfg Config, h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:            h,
		ErrorHandler:       lingerAfter(transportErrors(cfg.MaxBody)),
		ConnState:          connState,
		ReadTimeout:        cfg.ReadTimeout,
		WriteTimeout:       cfg.WriteTimeout,
		IdleTimeout:        cfg.IdleTimeout,
		MaxRequestBodySize: cfg.MaxBody,
		// The listener refuses connections over Config.MaxConns with the
		// JSON error (conn.go); fasthttp's own limit, which answers in
		// text/plain, is only a backstop: it frees a connection's slot a
		// moment after the listener does. Its per-IP limit is not used:
		// it wraps the connection, hiding it from the drain and the
		// lingering close, and counts IPv4 clients only.
		Concurrency:           2 * cfg.MaxConns,
		CloseOnShutdown:       true, // only for the last moments of Shutdown, see there
		NoDefaultServerHeader: true,
		SecureErrorLogMessage: true, // a client's bytes stay out of the log too
		// fasthttp would otherwise read a multipart/form-data body whole
		// before any handler, up to 16 MiB in memory and the rest in
		// temporary files, outside Body's limits and budget. No route
		// takes a form.
		DisablePreParseMultipartForm: true,
		NoDefaultDate:                false,
		Logger:                       fastLogger{log},
	}
}

func (s *Server) serve(ctx *fasthttp.RequestCtx) {
	s.inFlight.Add(1)
	var stats *metrics.Route
	defer func() {
		s.inFlight.Add(-1)
		s.done(ctx, stats)
	}()
	if refuseFraming(ctx) || s.tooLarge(ctx) {
		return
	}
	stats = s.Router.serve(ctx)
	compressResponse(ctx)
	if bodyLeftUnread(ctx) {
		EndEarly(ctx) // the rest of it would be read as the next request
	}
	if s.draining.Load() {
		// End the connection at this request boundary: the client opens
		// its next connection elsewhere (or learns the server is gone)
		// instead of sending on one about to close.
		ctx.SetConnectionClose()
		s.closedAfterResponse.Add(1)
	}
}

// tooLarge answers 413 to a request whose Content-Length is over the
// limit: what fasthttp does before any handler when it reads the body
// itself; a body it streams is the server's to bound.
func (s *Server) tooLarge(ctx *fasthttp.RequestCtx) bool {
	if ctx.Request.Header.ContentLength() <= s.maxBody {
		return false
	}
	WriteError(ctx, endEarly(ctx, Errorf(fasthttp.StatusRequestEntityTooLarge, CodeBodyTooLarge,
		"request body exceeds the limit of %d bytes", s.maxBody)))
	return true
}

// expect answers a request with Expect: 100-continue from its headers,
// before the client sends the body: 100 Continue if the route wants it, or
// the final answer (413 over the limit, 404, 405, or the route's refusal,
// such as a 503 from an overloaded pool). A client that waits for it (curl
// does for bodies over 1 MiB) learns of a refusal in one round trip instead
// of after its upload. fasthttp writes the response as the route left it
// and closes the connection, by lingering, as the client may already be
// sending.
func (s *Server) expect(ctx *fasthttp.RequestCtx) int {
	if refuseFraming(ctx) || s.tooLarge(ctx) {
		EndEarly(ctx)
		s.done(ctx, nil)
		return ctx.Response.StatusCode()
	}
	if want, stats := s.Router.early(ctx); !want || s.wontFit(ctx) {
		EndEarly(ctx)
		s.done(ctx, stats)
		return ctx.Response.StatusCode()
	}
	return fasthttp.StatusContinue
}

// done counts a request answered: the one place of the request path that
// records its metrics, with stats its route's (nil: no route took it),
// echoes its request id (X-Request-ID: the client's if it is safe, else
// one generated) and writes its access-log line.
func (s *Server) done(ctx *fasthttp.RequestCtx, stats *metrics.Route) {
	s.requests.Add(1)
	if stats == nil {
		stats = s.unmatched
	}
	mode, took := modeOf(ctx), time.Since(ctx.Time())
	stats.Record(ctx.Method(), ctx.Response.StatusCode(), mode, took)
	var buf [32]byte
	id := s.ids.requestID(ctx, &buf)
	ctx.Response.Header.SetBytesV(RequestIDHeader, id)
	if s.accessLog != nil {
		s.accessLog.write(ctx, id, mode, took, s.workerID)
	}
}

// SetAccessLog makes the server write l's line for every request it
// answers (nil: none). Call it before Serve.
func (s *Server) SetAccessLog(l *AccessLog) { s.accessLog = l }

// modeKey is the request's user value that holds its metrics.Mode.
type modeKey struct{}

// SetMode tells the request's metrics where its workload runs: "inline",
// "pool" or "isolate". Without it, the request's mode label is "".
func SetMode(ctx *fasthttp.RequestCtx, mode string) {
	ctx.SetUserValue(modeKey{}, metrics.ParseMode(mode))
}

func modeOf(ctx *fasthttp.RequestCtx) metrics.Mode {
	m, _ := ctx.UserValue(modeKey{}).(metrics.Mode)
	return m
}

// wontFit answers 503 to a request whose declared body would not fit the
// worker's budget of bodies in flight now (see body.go), so that a client
// that waits for 100 Continue does not upload it to be refused. It does
// not reserve: the handler's Body does, and decides again.
func (s *Server) wontFit(ctx *fasthttp.RequestCtx) bool {
	if s.conns.bodies.fits(ctx.Request.Header.ContentLength()) {
		return false
	}
	s.conns.bodies.refused.Add(1)
	WriteError(ctx, overBudget(ctx, s.conns.bodies))
	return true
}

// lingerAfter marks the connection of an early error response (the errors
// fasthttp meets before any handler runs) to close by lingering (conn.go),
// and has h write the response.
func lingerAfter(h func(*fasthttp.RequestCtx, error)) func(*fasthttp.RequestCtx, error) {
	return func(ctx *fasthttp.RequestCtx, err error) {
		if c, ok := ctx.Conn().(*conn); ok {
			c.lingerOnClose()
		}
		h(ctx, err)
	}
}

// connState keeps each connection's phase for the drain (see conn.go).
// fasthttp calls it on the connection's own goroutine.
func connState(nc net.Conn, st fasthttp.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	switch st {
	case fasthttp.StateActive:
		c.active()
	case fasthttp.StateIdle:
		c.idle()
	}
}

// healthSection is a section of GET /health: "key": and what appendJSON
// appends.
type healthSection struct {
	key        string
	appendJSON func([]byte) []byte
}

// AddHealth adds a section to GET /health: "key": followed by the JSON value
// appendJSON appends to its argument, called on every request. Sections
// follow the server's own fields, sorted by key. Call it before Serve.
//
// A health check is polled, often by several load balancers: the section
// should append without reflection or allocation (package internal/jsonw).
func (s *Server) AddHealth(key string, appendJSON func([]byte) []byte) {
	s.extras = append(s.extras, healthSection{key, appendJSON})
	slices.SortFunc(s.extras, func(a, b healthSection) int { return strings.Compare(a.key, b.key) })
}

// Serve accepts connections on ln until Shutdown. Blocking. It returns nil
// once Shutdown has closed ln; the connections it accepted are served on
// until Shutdown ends them.
func (s *Server) Serve(ln net.Listener) error {
	l := &listener{Listener: ln, s: s, held: -1}
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.listeners = append(s.listeners, l)
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	return s.fs.Serve(l)
}

// Accepting is closed once the server's accept loop runs: the moment a worker
// may report ready.
func (s *Server) Accepting() <-chan struct{} { return s.accepting }

// Shutdown drains the server: it marks it not ready, stops accepting, and
// ends every connection at a request boundary, so that no client loses a
// request it sent on a connection the server accepted:
//
//   - the next response on each connection says Connection: close, and the
//     connection closes after it;
//   - a connection idle for Config.DrainGrace (or that never sent a byte)
//     is closed, but never while a request byte waits unread in its
//     socket; its client sees the close of an idle connection, as after
//     IdleTimeout;
//   - requests under way finish, and lingering closes (see conn.go) run
//     to their end.
//
// Shutdown returns nil once no connection is open, or ctx's error if ctx
// ends first; then the connections still open are left to the process's
// exit.
//
// fasthttp's own ShutdownWithContext is not the drain: it makes every idle
// keep-alive connection close at once (server.go, s.stop), racing clients
// about to send. It runs only at the end, when nothing is left to close.
func (s *Server) Shutdown(ctx context.Context) error {
	start := time.Now()
	s.mu.Lock()
	s.draining.Store(true)
	lns := s.listeners
	s.mu.Unlock()
	var errs []error
	for _, l := range lns {
		if err := l.stop(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	served := make(chan struct{})
	go func() { s.serving.Wait(); close(served) }() // Serve returns once its listener is closed
	tick := time.NewTicker(drainTick)
	defer tick.Stop()
	for {
		// Serve has returned only after its last accept and sweep, and
		// every connection it handed out was tracked before that: look at
		// served first, then count.
		var acceptsDone bool
		select {
		case <-served:
			acceptsDone = true
			for _, l := range lns {
				l.release()
			}
		default:
		}
		open := s.conns.expireIdle(time.Now(), s.grace)
		if acceptsDone && open == 0 {
			s.log.Info("connections drained", "took", time.Since(start).Round(time.Millisecond).String(),
				"closed_after_response", s.closedAfterResponse.Load(), "closed_idle", s.conns.closedIdle.Load(),
				"lingered", s.conns.lingered.Load())
			// Nothing is open: this only releases fasthttp's state.
			return errors.Join(append(errs, s.fs.ShutdownWithContext(ctx))...)
		}
		select {
		case <-ctx.Done():
			s.log.Warn("connections still open at the drain deadline", "open_conns", open, "in_flight", s.inFlight.Load())
			s.fs.ShutdownWithContext(ctx) // closes what is idle, returns at once
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// drainTick is how often a drain looks for idle connections to close and
// for its end.
const drainTick = 20 * time.Millisecond

// Stats returns the server's counters and the process's memory.
func (s *Server) Stats() Stats {
	return Stats{
		Requests:   s.requests.Load(),
		InFlight:   s.inFlight.Load(),
		RSS:        s.rss.get(),
		Goroutines: runtime.NumGoroutine(),
	}
}

// healthBufs hold /health documents while they are built.
var healthBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// health is liveness: 200 while the process can answer at all. Its
// document:
//
//	{"status":"ok"|"draining","pid":…,"worker":…,"uptime_s":…,"rss_bytes":…,
//	 "goroutines":…,"requests":…,"in_flight":…,"body_bytes_in_flight":…,
//	 "bodies_refused":…,"conns_refused":…, <sections of AddHealth>}
//
// It is appended by hand (internal/jsonw), and RSS is read from /proc at
// most every 500 ms (rssSampler), not per call. Through encoding/json it
// cost 14 µs and 31 allocations per call.
func (s *Server) health(ctx *fasthttp.RequestCtx) {
	status := "ok"
	if s.draining.Load() {
		status = "draining"
	}
	bp := healthBufs.Get().(*[]byte)
	o := jsonw.Open((*bp)[:0])
	o.String("status", status)
	o.Int("pid", int64(s.pid))
	o.Int("worker", int64(s.workerID))
	o.Float("uptime_s", time.Since(s.started).Round(time.Millisecond).Seconds())
	o.Uint("rss_bytes", s.rss.get())
	o.Int("goroutines", int64(runtime.NumGoroutine()))
	o.Uint("requests", s.requests.Load())
	o.Int("in_flight", s.inFlight.Load())
	o.Int("body_bytes_in_flight", s.conns.bodies.used.Load())
	o.Uint("bodies_refused", s.conns.bodies.refused.Load())
	o.Uint("conns_refused", s.conns.refused.Load())
	for _, x := range s.extras {
		o.Key(x.key)
		o.B = x.appendJSON(o.B)
	}
	*bp = append(o.Close(), '\n')
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/json")
	ctx.SetBody(*bp)
	healthBufs.Put(bp)
}

// ready is readiness: 503 while draining, so that a load balancer stops
// sending before the worker goes.
func (s *Server) ready(ctx *fasthttp.RequestCtx) {
	if s.draining.Load() {
		WriteError(ctx, Errorf(fasthttp.StatusServiceUnavailable, CodeDraining, "worker %d is draining", s.workerID))
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/json")
	ctx.SetBody(s.readyJSON)
}

// readyDoc is the /ready body: {"status":"ready","pid":…,"worker":…}.
func readyDoc(pid, worker int) []byte {
	o := jsonw.Open(nil)
	o.String("status", "ready")
	o.Int("pid", int64(pid))
	o.Int("worker", int64(worker))
	return append(o.Close(), '\n')
}

// fastLogger routes fasthttp's own messages to slog.
type fastLogger struct{ log *slog.Logger }

// A client's own error on its connection (a body over the limit, a timeout)
// is answered to that client and logged at debug level only.
func (l fastLogger) Printf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.HasPrefix(msg, "error when serving connection") {
		l.log.Debug(msg, "source", "fasthttp")
		return
	}
	l.log.Warn(msg, "source", "fasthttp")
}

// rssSampler reads RSS at most every rssMaxAge: reading /proc on every
// /health request halves its throughput, and memory needs no fresher view.
type rssSampler struct {
	at  atomic.Int64 // unix nanoseconds of the last sample
	val atomic.Uint64
}

const rssMaxAge = 500 * time.Millisecond

func (r *rssSampler) get() uint64 {
	now := time.Now().UnixNano()
	if last := r.at.Load(); now-last > int64(rssMaxAge) && r.at.CompareAndSwap(last, now) {
		r.val.Store(RSS())
	}
	return r.val.Load()
}

// RSS returns this process's resident set size in bytes, from /proc.
func RSS() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, resident uint64
	if _, err := fmt.Sscan(string(b), &size, &resident); err != nil {
		return 0
	}
	return resident * uint64(os.Getpagesize())
}
