package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
	"github.com/hybrid-server/hybrid/taskpool"
)

// serveConfig is everything `hybrid serve` reads from flags and environment.
// The primary and its workers parse the same arguments and environment, so
// they always agree on it.
type serveConfig struct {
	pool      procpool.Config
	server    server.Config
	adminAddr string
	// adminToken is the bearer token the admin endpoint wants (server.WithToken).
	adminToken string
	// configFile is --config, which parseFlags reads.
	configFile string
	logFormat  string
	logLevel   string
	maxRSS     uint64
	maxBody    uint64

	maxInflightBody uint64

	// tasks configures the task pool; the isolate admission pool is the
	// same but for its size (isoProcs).
	tasks         taskpool.Config
	taskTimeout   time.Duration
	modes         string
	allowOverride bool
	maxOutput     uint64

	iso      isolate.Config
	isoUser  string
	isoProcs int

	imageMaxPixels int
	imageMaxOutput int
	imageMaxFrames int

	// accessLog is --access-log: off, stderr or a file path
	// (server.OpenAccessLog).
	accessLog string
	// pprof is --pprof: each worker serves net/http/pprof on loopback, for
	// the admin's /workers/{id}/debug/pprof/.
	pprof bool

	// scale is API keys, rate limits, the result cache and Redis.
	scale scaleConfig
}

func serveFlagSet(out io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{pool: procpool.DefaultConfig(), server: server.DefaultConfig()}
	c.maxBody = uint64(c.server.MaxBody)
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(out)
	p := &c.pool
	fs.StringVar(&p.Addr, "addr", p.Addr, "address to serve on")
	fs.StringVar(&c.configFile, "config", "", "a file of settings, one name = value a line, named as these flags; the environment and the command line win over it")
	fs.StringVar(&c.adminAddr, "admin-addr", defaultAdminAddr, `the primary's admin address: host:port, unix:/path (a 0600 socket), or "off"`)
	fs.StringVar(&c.adminToken, "admin-token", "", "bearer token the admin endpoint wants; required for an --admin-addr not on loopback (prefer HYBRID_ADMIN_TOKEN or --config: a command line is visible to every user)")
	fs.StringVar(&p.Binary, "binary", "", "what an upgrade (SIGUSR2, POST /upgrade) executes as the new primary (\"\": the path this one was started from, symlinks kept)")
	fs.IntVar(&p.Workers, "workers", p.Workers, "worker processes; the default is GOMAXPROCS, which honours the container's CPU limit")
	fs.IntVar(&p.WorkerProcs, "worker-procs", 0, "GOMAXPROCS of each worker (0: GOMAXPROCS ÷ workers, at least 1)")
	fs.StringVar(&p.ListenMode, "listen-mode", p.ListenMode, "shared (one socket owned by the primary) or reuseport (a SO_REUSEPORT socket per worker)")
	fs.StringVar(&p.AcceptBalance, "accept-balance", p.AcceptBalance, "shared socket: conns (a worker with more open connections than another lets it accept first) or off")
	fs.DurationVar(&p.StartTimeout, "start-timeout", p.StartTimeout, "a worker not ready within this is killed and counted as a crash")
	fs.DurationVar(&p.RestartBackoff, "restart-backoff", p.RestartBackoff, "first restart delay after a crash; doubles on each crash")
	fs.DurationVar(&p.RestartBackoffMax, "restart-backoff-max", p.RestartBackoffMax, "cap of the restart delay")
	fs.IntVar(&p.MaxCrashes, "max-crashes", p.MaxCrashes, "more crashes than this within --crash-window open the circuit (no more forks until a reload)")
	fs.DurationVar(&p.CrashWindow, "crash-window", p.CrashWindow, "window of the crash count; a worker up this long resets its backoff")
	fs.DurationVar(&p.HeartbeatInterval, "heartbeat-interval", p.HeartbeatInterval, "how often a worker reports its status")
	fs.DurationVar(&p.HeartbeatTimeout, "heartbeat-timeout", p.HeartbeatTimeout, "a worker silent this long is hung: SIGQUIT, SIGKILL, restart")
	fs.Var(sizeFlag{&c.maxRSS}, "max-rss", "recycle a worker whose RSS exceeds this (0: off)")
	fs.Uint64Var(&p.MaxRequests, "max-requests", 0, "recycle a worker after this many requests, plus up to 10% jitter (0: off)")
	fs.DurationVar(&p.ShutdownTimeout, "shutdown-timeout", p.ShutdownTimeout, "drain time for in-flight requests before workers are killed")
	s := &c.server
	fs.Var(sizeFlag{&c.maxBody}, "max-body", "largest request body; larger ones get 413")
	fs.Var(sizeFlag{&c.maxInflightBody}, "max-inflight-body", "request-body bytes in flight per worker; a body beyond them gets 503 before it is read (0: 4 × --max-body; else at least 2 × --max-body)")
	fs.IntVar(&s.MaxConns, "max-conns", s.MaxConns, "connections one worker serves at once; more get 503")
	fs.IntVar(&s.MaxConnsPerIP, "max-conns-per-ip", 0, "connections one worker serves at once from one client address; more get 429 (0: no limit; keep it behind a load balancer or NAT, where clients share an address)")
	fs.DurationVar(&s.ReadTimeout, "read-timeout", s.ReadTimeout, "time to read one request")
	fs.DurationVar(&s.BodyIdleTimeout, "body-idle-timeout", s.BodyIdleTimeout, "a request body that sends nothing for this long gets 408 (--read-timeout still bounds the whole request)")
	fs.DurationVar(&s.WriteTimeout, "write-timeout", s.WriteTimeout, "time to write one response")
	fs.DurationVar(&s.IdleTimeout, "idle-timeout", s.IdleTimeout, "keep-alive idle time between requests")
	fs.DurationVar(&s.DrainGrace, "drain-grace", s.DrainGrace, "during a drain, a keep-alive connection idle this long is closed (one with an unread request byte never is)")
	fs.IntVar(&c.tasks.Size, "pool-size", 0, "tasks running at once per worker (0: the worker's GOMAXPROCS)")
	fs.DurationVar(&c.tasks.QueueWait, "queue-wait", 0, "admit a task while its predicted wait (the estimated work queued ahead ÷ run slots) is within this; beyond it 503 at once (0: a third of --task-timeout)")
	fs.IntVar(&c.tasks.Queue, "pool-queue", taskpool.DefaultQueue, "most tasks waiting per worker and pool, whatever their predicted wait: a memory cap; more get 503")
	fs.DurationVar(&c.taskTimeout, "task-timeout", 30*time.Second, "a task's deadline, queueing included; past it 504")
	fs.StringVar(&c.modes, "mode", "hash=pool,password=pool,compress=pool,image=isolate,image-info=inline", "execution mode per workload group: group=inline|pool|isolate,…")
	fs.BoolVar(&c.allowOverride, "allow-mode-override", false, "let a request choose its mode with ?mode= (for benchmarks; keep off in production)")
	c.maxOutput = handlers.DefaultMaxOutput
	fs.Var(sizeFlag{&c.maxOutput}, "max-output", "largest decompressed output; a bomb gets 413 after at most this much")
	fs.IntVar(&c.imageMaxPixels, "image-max-pixels", handlers.DefaultMaxPixels, "largest declared width × height × frames of an input image; more gets 422 before any pixel is decoded")
	fs.IntVar(&c.imageMaxOutput, "image-max-output", handlers.DefaultMaxOutputPixels, "largest output image, in pixels")
	fs.IntVar(&c.imageMaxFrames, "image-max-frames", handlers.DefaultMaxFrames, "most frames an input image (GIF) may declare")
	iso := &c.iso
	*iso = isolate.DefaultConfig()
	iso.Warm = 0 // the worker's GOMAXPROCS, not the primary's
	fs.DurationVar(&iso.Timeout, "isolate-timeout", iso.Timeout, "wall clock of one isolated task; its whole process group is killed past it")
	fs.Var(sizeFlag{&iso.Memory}, "isolate-memory", "memory limit of one isolated child")
	fs.DurationVar(&iso.CPU, "isolate-cpu", 0, "CPU time limit of one isolated child (0: the isolate timeout)")
	fs.IntVar(&iso.Warm, "isolate-warm", 0, "isolated children kept started and waiting per worker (0: the worker's GOMAXPROCS; -1: none)")
	fs.IntVar(&iso.Reuse, "isolate-reuse", iso.Reuse, "tasks one isolated child serves before it exits")
	fs.StringVar(&iso.Cgroup, "isolate-cgroup", iso.Cgroup, "what bounds an isolated child's memory and processes: auto (cgroup v2, else v1, else none), v1, v2, or off (RLIMIT_DATA and the seccomp filter)")
	fs.BoolVar(&iso.Strict, "isolate-strict", false, "refuse to start a worker whose host cannot enforce every isolate limit")
	fs.StringVar(&c.isoUser, "isolate-user", "", `uid:gid isolated children run as when hybrid runs as root ("": the user hybrid-isolate if it exists, else 65534:65534)`)
	fs.IntVar(&c.isoProcs, "isolate-procs", 0, "isolated children running at once per worker (0: the pool size)")
	fs.StringVar(&c.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.accessLog, "access-log", "off", "a JSON line per request: off, stderr, or a file path each worker appends to (whole lines, never interleaved)")
	c.scale = defaultScaleConfig()
	c.scale.flags(fs)
	fs.BoolVar(&c.pprof, "pprof", false, "profile workers through the admin endpoint: GET /workers/{id}/debug/pprof/… (each worker serves net/http/pprof on a loopback port)")
	return fs, c
}

func parseServe(args []string, out io.Writer) (*serveConfig, error) {
	fs, c := serveFlagSet(out)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := server.CheckAdminAddr(c.adminAddr, c.adminToken); err != nil {
		return nil, err
	}
	if c.maxBody > 1<<40 {
		return nil, fmt.Errorf("max body %s: want at most 1TiB", formatSize(c.maxBody))
	}
	if c.maxInflightBody > 1<<40 {
		return nil, fmt.Errorf("max in-flight body %s: want at most 1TiB", formatSize(c.maxInflightBody))
	}
	c.server.MaxBody = int(c.maxBody)
	c.server.MaxInflightBody = int(c.maxInflightBody)
	c.pool.MaxRSS = c.maxRSS
	if _, err := handlers.ParseModes(c.modes, handlers.Pool); err != nil {
		return nil, err
	}
	if c.imageMaxPixels < 1 || c.imageMaxOutput < 1 || c.imageMaxFrames < 1 {
		return nil, fmt.Errorf("image-max-pixels, image-max-output, image-max-frames: want ≥ 1")
	}
	// A flag's zero would mean isolate's default; as a flag it is a mistake.
	// The ranges are isolate.Config.Validate's (below).
	if c.iso.Timeout == 0 || c.iso.Memory == 0 || c.iso.Reuse == 0 || c.isoProcs < 0 {
		return nil, fmt.Errorf("isolate: timeout > 0, memory ≥ 32MiB, reuse ≥ 1, procs ≥ 0")
	}
	if c.isoUser != "" {
		u, err := parseUser(c.isoUser)
		if err != nil {
			return nil, err
		}
		c.iso.User = u
	}
	if c.tasks.Size < 0 || c.tasks.Queue < 1 || c.taskTimeout <= 0 || c.maxOutput == 0 || c.maxOutput > 1<<34 {
		return nil, fmt.Errorf("pool size: want ≥ 0; pool queue: want ≥ 1; task timeout: want > 0; max output: want 1B to 16GiB")
	}
	if c.tasks.QueueWait == 0 {
		c.tasks.QueueWait = c.taskTimeout / 3
	}
	if c.tasks.QueueWait < 0 || c.tasks.QueueWait >= c.taskTimeout {
		return nil, fmt.Errorf("queue wait %v: want > 0 and below the task timeout (%v), or admitted tasks time out in the queue",
			c.tasks.QueueWait, c.taskTimeout)
	}
	if err := c.scale.parse(); err != nil {
		return nil, err
	}
	if err := errors.Join(c.pool.Validate(), c.server.Validate(), c.tasks.Validate(), c.iso.Validate()); err != nil {
		return nil, err
	}
	return c, nil
}

// parseUser reads --isolate-user: "uid:gid", both numbers, neither 0.
func parseUser(s string) (*isolate.User, error) {
	u, g, ok := strings.Cut(s, ":")
	uid, err1 := strconv.ParseUint(u, 10, 32)
	gid, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil || uid == 0 || gid == 0 {
		return nil, fmt.Errorf("isolate-user %q: want uid:gid, two numbers other than 0 (root)", s)
	}
	return &isolate.User{UID: uint32(uid), GID: uint32(gid)}, nil
}

// runServe is the primary: it binds the address (or, started by an upgrade,
// inherits it), supervises the workers and serves the admin endpoint until
// SIGTERM or SIGINT, then drains, or until an upgrade's new primary took
// over. Signals: SIGHUP reloads, SIGUSR2 upgrades, SIGTTIN and SIGTTOU add
// and remove a worker (docs/operations.md).
func runServe(args []string) int {
	cfg, err := parseServe(args, os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "hybrid serve: %v\n", err)
		return 2
	}
	log, err := newLogger(os.Stderr, cfg.logFormat, cfg.logLevel, "primary", 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid serve: %v\n", err)
		return 2
	}

	// Signals are caught before any worker exists, so that none is lost.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU)
	defer signal.Stop(sigs)

	// cgroup v2: the primary moves into <own>/hybrid-procs before any worker
	// is forked, so that the workers can give isolated children cgroups of
	// their own under <own> (a cgroup with processes cannot).
	if did, err := isolate.PrepareCgroupV2(cfg.iso.Cgroup); err != nil {
		log.Warn("isolate: cgroup v2 not prepared for isolated children", "err", err.Error())
	} else if did != "" {
		log.Info("isolate: cgroup v2", "did", did)
	}
	// Started by systemd's socket activation: its sockets, not --addr.
	sdCluster, sdAdmin, err := systemdSockets()
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	// A passed admin socket is held to --admin-addr's rule, by the address
	// it is bound to: off loopback, only with a token.
	if sdAdmin != nil && sdAdmin.Addr().Network() == "tcp" {
		if err := server.CheckAdminAddr(sdAdmin.Addr().String(), cfg.adminToken); err != nil {
			log.Error("cannot start: the admin socket systemd passed", "err", err.Error())
			return 2
		}
	}
	if sdCluster != nil {
		cfg.pool.Listener = sdCluster
		log.Info("listening on the socket systemd passed", "addr", sdCluster.Addr().String())
	}
	// An upgrade carries the workers' metrics totals from the old primary
	// to the new one (procpool's own counters travel with them), so that
	// no counter goes backwards across it.
	clusterMetrics := &metrics.Cluster{}
	cfg.pool.CarryOut = clusterMetrics.CarryOut
	cfg.pool.CarryIn = func(payload []byte, final bool) {
		if err := clusterMetrics.CarryIn(payload); err != nil {
			log.Warn("upgrade: the old primary's metrics are not carried", "final", final, "err", err.Error())
		}
	}
	sweepTemp(log)
	shared, err := startShared(&cfg.scale, &cfg.pool, log)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	defer shared.close()
	defer removeKeysSnapshots()
	sup, err := procpool.New(cfg.pool, log)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	// SIGHUP and POST /reload check the configuration first.
	cluster, err := newReloadChecker(sup, args, log)
	if err != nil {
		log.Error("cannot start", "err", err.Error())
		return 1
	}
	sup.SetMetricsSink(clusterMetrics)
	var admin *server.Admin
	runDone := make(chan struct{}) // closed when sup.Run has returned
	// adminMu orders what becomes of a unix admin socket's file (removed
	// when this primary closes it, or kept for the new primary that serves
	// it), and the close itself, across the goroutines below and main.
	var adminMu sync.Mutex
	var adminLn net.Listener
	adminKept := false    // this primary handed the admin socket on: its file is the new primary's
	keepAdmin := func() { // with adminMu held
		if !adminKept {
			adminKept = true
			server.KeepAdminSocket(adminLn)
		}
	}
	if cfg.adminAddr != "off" {
		// After an upgrade the admin socket is the old primary's: binding
		// again would fail, and the socket never closes.
		ln, err := procpool.Inherited("admin")
		ownsFile := err == nil && ln != nil && inheritedAdminFile(ln)
		if err == nil && ln == nil && sdAdmin != nil {
			ln = sdAdmin
			os.Unsetenv(adminFileEnv) // systemd's file: never removed
		}
		if err == nil && ln == nil {
			ln, err = server.ListenAdmin(cfg.adminAddr)
			if err == nil {
				handDownAdminFile(ln)
			}
		}
		if err != nil {
			log.Error("cannot start admin endpoint", "err", err.Error())
			return 1
		}
		adminLn = ln
		sup.PassOn("admin", ln)
		admin = server.NewAdmin(cluster, log, server.WithToken(cfg.adminToken),
			server.WithMetrics(metricsText(sup, clusterMetrics, shared)))
		// Started by an upgrade, this primary answers on the inherited
		// admin socket only once it has taken over: until then the old
		// one answers every request, and a change asked of this one (POST
		// /pool) is not lost when it is rolled back.
		go func() {
			select {
			case <-sup.TookOver():
			case <-runDone:
				return
			}
			adminMu.Lock()
			if isClosed(runDone) || handedOver(sup) {
				adminMu.Unlock() // too late: this primary serves no more
				return
			}
			// Serving it, this primary removes the unix socket's file when
			// it exits, unless it hands it on to the next one.
			if ownsFile {
				server.RemoveAdminSocketOnClose(ln)
			}
			adminMu.Unlock()
			log.Info("admin endpoint listening", "admin_addr", ln.Addr().String())
			admin.Serve(ln)
		}()
		go func() { // the new primary answers on the admin socket from now on
			select {
			case <-sup.HandedOver():
			case <-runDone:
				return // main does what is left
			}
			adminMu.Lock()
			defer adminMu.Unlock()
			keepAdmin()
			stopAdmin(admin)
		}()
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	notified := make(chan struct{}) // notifySystemd has returned
	go func() {
		defer close(notified)
		notifySystemd(ctx, sup, log)
	}()
	forced := make(chan struct{})
	go func() {
		stopping := false
		for sig := range sigs {
			switch {
			case sig == syscall.SIGHUP:
				// A SIGHUP while a reload or upgrade runs is refused (a
				// WARN line): a storm of them runs only the reloads that
				// complete while it lasts, one at a time. The check reads
				// --config, which must never hold up a SIGTERM: it runs
				// off this loop.
				go func() {
					if err := cluster.Reload(); err != nil {
						log.Warn("SIGHUP ignored", "err", err.Error())
					} else {
						log.Info("SIGHUP: rolling reload")
					}
				}()
			case sig == syscall.SIGUSR2:
				log.Info("SIGUSR2: binary upgrade")
				go func() { // Upgrade waits for the outcome; signals go on meanwhile
					switch err := sup.Upgrade(context.Background()); {
					case errors.Is(err, procpool.ErrBusy):
						log.Warn("SIGUSR2 ignored", "err", err.Error())
					case err != nil:
						log.Error("SIGUSR2: upgrade failed", "err", err.Error())
					}
				}()
			case sig == syscall.SIGTTIN || sig == syscall.SIGTTOU:
				n := sup.Snapshot().WorkersWanted + 1
				if sig == syscall.SIGTTOU {
					n -= 2
				}
				if err := sup.Scale(n); err != nil {
					log.Warn("scale signal ignored", "signal", sig.String(), "err", err.Error())
				}
			case !stopping:
				log.Info("signal: graceful shutdown", "signal", sig.String())
				stopping = true
				cancel()
			default:
				log.Warn("second signal: forcing shutdown", "signal", sig.String())
				close(forced)
				sup.Kill()
				return
			}
		}
	}()

	err = sup.Run(ctx)
	close(runDone)
	if admin != nil {
		adminMu.Lock()
		if handedOver(sup) {
			keepAdmin()
		}
		stopAdmin(admin)
		adminMu.Unlock()
	}
	// After a hand-over, systemd must know the new main process before
	// this one exits (notifySystemd waits until it has read MAINPID=).
	cancel()
	<-notified
	if err != nil {
		log.Error("primary failed", "err", err)
		return 1
	}
	select {
	case <-forced:
		return 130
	default:
		return 0
	}
}

// adminFileEnv names the unix admin socket's file that the first primary
// of a line of upgrades created (server.ListenAdmin), and so the last one
// removes: each primary hands it down in its environment. A socket that
// systemd passed is systemd's file, never removed, and a TCP one has none:
// the variable is then unset.
const adminFileEnv = "HYBRID_ADMIN_SOCKET_FILE"

// handDownAdminFile records in the environment, which an upgrade's new
// primary inherits, whether ln (server.ListenAdmin's) has a file of ours.
func handDownAdminFile(ln net.Listener) {
	if ln.Addr().Network() == "unix" {
		os.Setenv(adminFileEnv, ln.Addr().String())
	} else {
		os.Unsetenv(adminFileEnv)
	}
}

// inheritedAdminFile reports whether ln, the admin listener an upgrade
// handed to this primary, is a unix socket whose file a primary before it
// created: then this one removes it once it exits, unless it hands it on.
func inheritedAdminFile(ln net.Listener) bool {
	return ln.Addr().Network() == "unix" && os.Getenv(adminFileEnv) == ln.Addr().String()
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// stopAdmin stops the admin endpoint, letting a request under way (POST
// /upgrade's own) finish for up to 5 s. Safe to call twice.
func stopAdmin(admin *server.Admin) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	admin.Shutdown(ctx)
}
