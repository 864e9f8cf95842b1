package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
	"github.com/hybrid-server/hybrid/taskpool"
)

// runWorker is a worker process: started by the primary with the primary's
// own arguments, it serves on the inherited socket until SIGTERM (drain) or
// until the primary is gone (drain within procpool.OrphanGrace).
func runWorker(args []string) int {
	// Until the control channel is attached, a failure can only be told on
	// stderr, which the primary keeps the tail of.
	w, err := procpool.Attach()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid worker: %v\n", err)
		return procpool.ExitConfig
	}
	defer w.Close()
	// unguard lets go of the start-up guard (guardStartup) before a fatal
	// message: the primary may close the control channel on reading it,
	// and the guard must not turn this worker's exit 78 (a configuration
	// error, never retried) into an exit 1 (a crash, retried).
	unguard := func() {}
	fatal := func(format string, a ...any) int {
		unguard()
		msg := fmt.Sprintf(format, a...)
		fmt.Fprintf(os.Stderr, "hybrid worker %d: %s\n", w.ID, msg)
		w.Fatal(msg)
		return procpool.ExitConfig
	}
	if len(args) == 0 || args[0] != "serve" {
		return fatal("started with %q, want the serve command", args)
	}
	cfg, err := parseServe(args[1:], os.Stderr)
	if err != nil {
		return fatal("configuration: %v", err)
	}
	log, err := newLogger(os.Stderr, cfg.logFormat, cfg.logLevel, "worker", w.ID)
	if err != nil {
		return fatal("configuration: %v", err)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP) // reload is the primary's business
	serving := guardStartup(w, sigs, log)
	unguard = sync.OnceFunc(serving)

	hooks, err := loadTestHooks(w)
	if err != nil {
		return fatal("test hooks: %v", err)
	}
	if code, stop := hooks.atStart(log); stop {
		if code == procpool.ExitConfig {
			return fatal("test hook: bad configuration")
		}
		return code
	}

	ln, err := w.Listener(context.Background())
	if err != nil {
		return fatal("%v", err)
	}
	if n := w.PoolSize(); n > 0 { // set at run time (POST /pool); outlives a restart until a reload
		cfg.tasks.Size = n
	}
	st, err := newWorkerStack(cfg, log, w.ID)
	if err != nil {
		return fatal("%v", err)
	}
	defer st.close()
	hooks.register(st.srv.Router, st.exec)
	alog, err := server.OpenAccessLog(cfg.accessLog, func(err error) {
		log.Error("access log: a write failed; lines are being lost", "err", err.Error())
	})
	if err != nil {
		return fatal("%v", err)
	}
	defer alog.Close()
	st.srv.SetAccessLog(alog)
	var pprofBase string
	if cfg.pprof {
		base, stop, err := servePprof(log)
		if err != nil {
			return fatal("pprof: %v", err)
		}
		defer stop()
		pprofBase = base
	}

	unguard()
	serveErr := make(chan error, 1)
	go func() { serveErr <- st.srv.Serve(ln) }()
	select {
	case <-st.srv.Accepting():
	case err := <-serveErr:
		log.Error("server failed to start", "err", err)
		return 1
	}
	if err := w.Ready(); err != nil {
		log.Error("cannot report ready", "err", err)
		return 1
	}

	beatCtx, stopBeats := context.WithCancel(context.Background())
	defer stopBeats()
	go reportBusy(beatCtx, w, st.pool, st.isoPool)
	go tunePool(beatCtx, w, st.pool, log)
	snaps := &snapshotter{st: st, log: log}
	status := func() procpool.Heartbeat {
		s := st.srv.Stats()
		return procpool.Heartbeat{RSS: s.RSS, Goroutines: s.Goroutines, Requests: s.Requests, InFlight: s.InFlight,
			Metrics: snaps.take(), Pprof: pprofBase}
	}
	beating := make(chan struct{})
	if hooks.heartbeats() {
		go func() { defer close(beating); w.Heartbeat(beatCtx, cfg.pool.HeartbeatInterval, status) }()
	} else {
		close(beating)
	}
	code := drainWorker(w, st.srv, log, sigs, serveErr, cfg.pool.ShutdownTimeout)
	if hooks.heartbeats() {
		// The last heartbeat, after every periodic one, so that the
		// primary's counters get every request this worker served.
		stopBeats()
		<-beating
		w.Beat(status())
	}
	return code
}

// guardStartup ends this worker at once should its
// primary go (the control channel's EOF) or ask it to stop (SIGTERM,
// SIGINT) before it serves: it has nothing to drain, and every second it
// lives it holds the cluster's socket (fd 3), which must not outlive the
// primary (a rolled-back upgrade's, killed with SIGKILL). A start that
// hangs (a slow isolate check, a stuck cgroup, the test hook "slow") would
// otherwise hold it until the SIGKILL the primary sends past
// --shutdown-timeout, or, with the primary gone, indefinitely: SIGTERM, its
// parent-death signal, is caught for the drain and read only once it serves.
//
// Why not a parent-death signal of SIGKILL until ready, then SIGTERM: the
// signal is a per-thread setting in Linux, set by the forking thread on
// the exec'd main thread; a prctl(PR_SET_PDEATHSIG) from the worker would
// change it on whatever thread the goroutine runs on, not the main thread's,
// so the SIGKILL would stay and cut every later drain short. The control
// channel's EOF comes however the primary died and needs no signal.
//
// Call the returned func right before the server starts accepting; from
// then on drainWorker handles both, with the drain they call for. It
// returns once the guard has let go of sigs.
func guardStartup(w *procpool.Worker, sigs <-chan os.Signal, log *slog.Logger) (serving func()) {
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-stop:
			return
		case sig := <-sigs:
			log.Info("stopped before serving: exiting", "signal", sig.String())
			os.Exit(0)
		case <-w.ParentGone():
			log.Warn("primary is gone before this worker served: exiting")
		}
		os.Exit(1)
	}()
	return func() {
		close(stop)
		<-stopped
	}
}

// workerStack is what a worker serves with: the HTTP server, the task pool,
// the isolator and its admission pool, and the executor over them.
type workerStack struct {
	srv           *server.Server
	pool, isoPool *taskpool.Pool
	iso           *isolate.Isolator
	exec          *handlers.Executor
	closeShared   func() // the Redis client's connections
}

// newWorkerStack builds a worker's stack from its configuration, with the
// workload routes and the /health sections registered.
func newWorkerStack(cfg *serveConfig, log *slog.Logger, id int) (*workerStack, error) {
	st := &workerStack{srv: server.New(cfg.server, log, id)}
	var err error
	if st.pool, err = taskpool.New(cfg.tasks); err != nil {
		return nil, err
	}
	if st.iso, err = isolate.New(cfg.iso, log); err != nil {
		st.close()
		return nil, err
	}
	isoProcs := cfg.isoProcs
	if isoProcs == 0 {
		isoProcs = st.pool.Stats().Capacity
	}
	isoCfg := cfg.tasks
	isoCfg.Size = isoProcs
	if st.isoPool, err = taskpool.New(isoCfg); err != nil {
		st.close()
		return nil, err
	}
	modes, _ := handlers.ParseModes(cfg.modes, handlers.Pool) // validated by parseServe
	st.exec = &handlers.Executor{Pool: st.pool, IsolatePool: st.isoPool, Isolate: st.iso, Modes: modes,
		AllowOverride: cfg.allowOverride, MaxBody: cfg.server.MaxBody, TaskTimeout: cfg.taskTimeout,
		MaxOutput: int(cfg.maxOutput), Log: log, IsolateTimeout: cfg.iso.Timeout,
		ImageMaxPixels: cfg.imageMaxPixels, ImageMaxOutput: cfg.imageMaxOutput, ImageMaxFrames: cfg.imageMaxFrames}
	if st.exec.Access, st.exec.Cache, st.closeShared, err = workerShared(&cfg.scale, log); err != nil {
		st.close()
		return nil, err
	}
	st.exec.Mount(st.srv.Router)
	addSharedHealth(st)
	st.srv.AddHealth("pool", st.pool.AppendStats)
	st.srv.AddHealth("isolate", func(b []byte) []byte {
		o := jsonw.Open(b)
		st.iso.AppendStatsFields(&o)
		o.Key("admission")
		o.B = st.isoPool.AppendStats(o.B)
		return o.Close()
	})
	return st, nil
}

// close ends the pools (failing queued tasks) and the isolator's children.
func (st *workerStack) close() {
	for _, p := range []*taskpool.Pool{st.pool, st.isoPool} {
		if p != nil {
			p.Close(context.Background())
		}
	}
	if st.iso != nil {
		st.iso.Close()
	}
	if st.closeShared != nil {
		st.closeShared()
	}
}

// drainWorker serves until SIGTERM, the primary's death or the server's
// failure, then drains within grace (procpool.OrphanGrace without a
// primary) and returns the exit code.
func drainWorker(w *procpool.Worker, srv *server.Server, log *slog.Logger, sigs <-chan os.Signal,
	serveErr <-chan error, grace time.Duration) int {
	select {
	case sig := <-sigs:
		log.Info("draining", "signal", sig.String())
	case <-w.ParentGone():
		log.Warn("primary is gone: draining and exiting")
		grace = procpool.OrphanGrace
	case err := <-serveErr:
		log.Error("server stopped", "err", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	go func() { // the primary may die during a long drain: then bound it
		select {
		case <-w.ParentGone():
			t := time.NewTimer(procpool.OrphanGrace)
			defer t.Stop()
			select {
			case <-t.C:
				cancel()
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("drain cut short; exiting with requests in flight", "err", err, "in_flight", srv.Stats().InFlight)
		return 1
	}
	log.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	return 0
}

// busyTick is how often a worker tells its peers whether it refuses work.
const busyTick = 10 * time.Millisecond

// reportBusy keeps this worker's busy flag on the accept board: set while
// either of its pools would refuse a new task, so that new connections go
// to a worker with room. It ends with ctx.
func reportBusy(ctx context.Context, w *procpool.Worker, pools ...*taskpool.Pool) {
	t := time.NewTicker(busyTick)
	defer t.Stop()
	for {
		busy := false
		for _, p := range pools {
			busy = busy || p.Saturated()
		}
		w.SetBusy(busy)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tunePool applies the task-pool sizes the primary sends (POST /pool) to
// the running pool, without a restart, until ctx ends. The isolate
// admission pool keeps its size.
func tunePool(ctx context.Context, w *procpool.Worker, pool *taskpool.Pool, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.PoolSizeChanged():
		}
		n := w.PoolSize()
		if err := pool.Tune(n); err != nil {
			log.Warn("pool size not applied", "pool_size", n, "err", err.Error())
			continue
		}
		log.Info("pool size set", "pool_size", n)
	}
}

// servePprof serves net/http/pprof's handlers (--pprof) on a listener of
// its own, on loopback and an ephemeral port, never on the cluster's
// address, and returns its base URL, http://127.0.0.1:<port>/<secret>,
// which the heartbeat carries to the primary: the admin endpoint proxies
// GET /workers/{id}/debug/pprof/… to it (server.Admin). The secret path,
// 128 random bits, keeps other local users out: the port is anyone's to
// connect to. The handlers are on a private mux: importing net/http/pprof
// registers them on http.DefaultServeMux too, which nothing here serves.
// stop closes the server.
func servePprof(log *slog.Logger) (base string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	secret := rand.Text()
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{
		Handler:           http.StripPrefix("/"+secret, mux),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// Idle connections close: any local user can connect to the port
		// (the secret is checked only once a request arrives), and kept
		// ones would pile up to the worker's descriptor limit and stop
		// its own listener (the issue-13 review did, with 20,000).
		IdleTimeout: 5 * time.Second,
		// Above the admin's bound on ?seconds= (60), which pprof checks
		// against it.
		WriteTimeout: 90 * time.Second,
		ErrorLog:     slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go srv.Serve(&capListener{Listener: ln, slots: make(chan struct{}, pprofConns)})
	log.Info("pprof listening on loopback", "pprof_addr", ln.Addr().String())
	return "http://" + ln.Addr().String() + "/" + secret, func() { srv.Close() }, nil
}

// pprofConns bounds the connections a worker's pprof listener holds at
// once: the admin makes one per profile, one profile per worker at a time.
const pprofConns = 8

// capListener accepts at most cap(slots) connections at once; Accept waits
// for one to close. It keeps a flood of local connections from taking a
// worker's descriptors.
type capListener struct {
	net.Listener
	slots chan struct{}
}

func (l *capListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &capConn{Conn: c, free: sync.OnceFunc(func() { <-l.slots })}, nil
}

type capConn struct {
	net.Conn
	free func()
}

func (c *capConn) Close() error {
	c.free()
	return c.Conn.Close()
}
