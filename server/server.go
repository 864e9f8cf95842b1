package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Config holds a worker server's limits. Zero fields take the defaults of
// [DefaultConfig].
type Config struct {
	// MaxBody is the largest request body accepted; larger ones get 413.
	MaxBody int
	// ReadTimeout bounds reading one request, headers and body.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing one response.
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a keep-alive
	// connection.
	IdleTimeout time.Duration
}

// DefaultConfig returns the limits hybrid serve uses without flags.
func DefaultConfig() Config {
	return Config{
		MaxBody:      32 << 20,
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  60 * time.Second,
	}
}

// Validate reports the first invalid limit.
func (c Config) Validate() error {
	switch {
	case c.MaxBody < 0:
		return fmt.Errorf("server: max body %d: want a positive size", c.MaxBody)
	case c.ReadTimeout < 0 || c.WriteTimeout < 0 || c.IdleTimeout < 0:
		return fmt.Errorf("server: timeouts must be positive")
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
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
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
	started  time.Time
	fs       *fasthttp.Server

	requests  atomic.Uint64
	inFlight  atomic.Int64
	rss       rssSampler
	extras    map[string]func() any
	draining  atomic.Bool
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
		started:   time.Now(),
		accepting: make(chan struct{}),
		extras:    map[string]func() any{},
	}
	s.fs = newFastServer(cfg, s.serve, log)
	s.Router.Handle(fasthttp.MethodGet, "/health", s.health)
	s.Router.Handle(fasthttp.MethodGet, "/ready", s.ready)
	return s
}

func newFastServer(cfg Config, h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:               h,
		ErrorHandler:          transportErrors(cfg.MaxBody),
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		MaxRequestBodySize:    cfg.MaxBody,
		CloseOnShutdown:       true, // responses during a drain say Connection: close
		NoDefaultServerHeader: true,
		NoDefaultDate:         false,
		Logger:                fastLogger{log},
	}
}

func (s *Server) serve(ctx *fasthttp.RequestCtx) {
	s.inFlight.Add(1)
	defer func() {
		s.inFlight.Add(-1)
		s.requests.Add(1)
	}()
	s.Router.Serve(ctx)
	compressResponse(ctx)
}

// AddHealth adds a section to GET /health: key's value is f(), called on
// every request. Call it before Serve.
func (s *Server) AddHealth(key string, f func() any) { s.extras[key] = f }

// Serve accepts connections on ln until Shutdown. Blocking.
func (s *Server) Serve(ln net.Listener) error {
	return s.fs.Serve(acceptSignal{Listener: ln, s: s})
}

// Accepting is closed once the server's accept loop runs: the moment a worker
// may report ready.
func (s *Server) Accepting() <-chan struct{} { return s.accepting }

// Shutdown stops accepting, marks the server not ready, and waits until the
// in-flight requests finish or ctx is done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	return s.fs.ShutdownWithContext(ctx)
}

// Stats returns the server's counters and the process's memory.
func (s *Server) Stats() Stats {
	return Stats{
		Requests:   s.requests.Load(),
		InFlight:   s.inFlight.Load(),
		RSS:        s.rss.get(),
		Goroutines: runtime.NumGoroutine(),
	}
}

type healthBody struct {
	Status     string         `json:"status"`
	PID        int            `json:"pid"`
	Worker     int            `json:"worker"`
	UptimeS    float64        `json:"uptime_s"`
	RSS        uint64         `json:"rss_bytes"`
	Goroutines int            `json:"goroutines"`
	Requests   uint64         `json:"requests"`
	InFlight   int64          `json:"in_flight"`
	Extras     map[string]any `json:"-"`
}

// MarshalJSON flattens Extras into the object.
func (h healthBody) MarshalJSON() ([]byte, error) {
	type plain healthBody
	b, err := json.Marshal(plain(h))
	if err != nil || len(h.Extras) == 0 {
		return b, err
	}
	x, err := json.Marshal(h.Extras)
	if err != nil {
		return nil, err
	}
	return append(append(b[:len(b)-1], ','), x[1:]...), nil
}

// health is liveness: 200 while the process can answer at all.
func (s *Server) health(ctx *fasthttp.RequestCtx) {
	st := s.Stats()
	status := "ok"
	if s.draining.Load() {
		status = "draining"
	}
	var extras map[string]any
	if len(s.extras) > 0 {
		extras = make(map[string]any, len(s.extras))
		for k, f := range s.extras {
			extras[k] = f()
		}
	}
	WriteJSON(ctx, fasthttp.StatusOK, healthBody{
		Extras:     extras,
		Status:     status,
		PID:        os.Getpid(),
		Worker:     s.workerID,
		UptimeS:    time.Since(s.started).Round(time.Millisecond).Seconds(),
		RSS:        st.RSS,
		Goroutines: st.Goroutines,
		Requests:   st.Requests,
		InFlight:   st.InFlight,
	})
}

// ready is readiness: 503 while draining, so that a load balancer stops
// sending before the worker goes.
func (s *Server) ready(ctx *fasthttp.RequestCtx) {
	if s.draining.Load() {
		WriteError(ctx, Errorf(fasthttp.StatusServiceUnavailable, CodeDraining, "worker %d is draining", s.workerID))
		return
	}
	WriteJSON(ctx, fasthttp.StatusOK, readyBody{Status: "ready", PID: os.Getpid(), Worker: s.workerID})
}

type readyBody struct {
	Status string `json:"status"`
	PID    int    `json:"pid"`
	Worker int    `json:"worker"`
}

// acceptSignal closes the server's accepting channel on the first Accept.
type acceptSignal struct {
	net.Listener
	s *Server
}

func (a acceptSignal) Accept() (net.Conn, error) {
	a.s.acceptOne.Do(func() { close(a.s.accepting) })
	return a.Listener.Accept()
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
