package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/cache"
	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/internal/jsonw"
	"github.com/hybrid-server/hybrid/internal/resp"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/ratelimit"
)

// Beyond one box: API keys, rate limits and the result cache, each shared
// by the box's workers through the primary (the rate table in shared
// memory, the cache behind a socket of the primary's), and across hosts
// through Redis when --redis is set. docs/operations.md, "Scaling out".

// scaleConfig is the scaling-out part of serveConfig.
type scaleConfig struct {
	apiKeys      string
	rateLimit    string
	rateBurst    int
	rateKeys     int
	redisURL     string
	redisCache   string
	redisFail    string
	redisTimeout time.Duration
	cacheSize    uint64
	cacheTTL     time.Duration
	cacheEntry   uint64

	// Parsed once, by parse.
	keys *handlers.APIKeys
	rule ratelimit.Rule
	fail handlers.RedisFail
}

func (c *scaleConfig) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.apiKeys, "api-keys", "", "a file of API keys, one a line: KEY [name=NAME] [limit=100/min|off] [burst=N]; when set, workload requests without a valid key get 401 (re-read on reload)")
	fs.StringVar(&c.rateLimit, "rate-limit", "off", "requests per client (per API key, or per client IP without --api-keys): COUNT/PERIOD such as 100/min, or off; exact across the box's workers, and across hosts with --redis")
	fs.IntVar(&c.rateBurst, "rate-burst", 0, "requests a client may send at once, within --rate-limit (0: its count)")
	fs.IntVar(&c.rateKeys, "rate-limit-keys", ratelimit.DefaultSlots, "clients the box's rate-limit table holds (1 MiB per 57,344); past it the client with most allowance left is forgotten")
	fs.StringVar(&c.redisURL, "redis", "", "redis://[:password@]host:port/db (or rediss://) shared by every instance: rate limits across hosts (give it maxmemory-policy noeviction)")
	fs.StringVar(&c.redisCache, "redis-cache", "", "a Redis for the result cache across hosts (maxmemory with allkeys-lru); not --redis's, whose limits the cache's writes would evict or refuse")
	fs.StringVar(&c.redisFail, "redis-fail", string(handlers.FailLocal), "rate limits while Redis fails: local (the box's own table decides), open (admit) or closed (503)")
	fs.DurationVar(&c.redisTimeout, "redis-timeout", 100*time.Millisecond, "bound of every Redis call, connecting included")
	fs.Var(sizeFlag{&c.cacheSize}, "cache-size", "the box's result cache, held by the primary and shared by its workers (0: no cache)")
	fs.DurationVar(&c.cacheTTL, "cache-ttl", 10*time.Minute, "how long a cached result is kept, in the box's cache and in Redis")
	fs.Var(sizeFlag{&c.cacheEntry}, "cache-max-entry", "the largest result cached")
}

func defaultScaleConfig() scaleConfig {
	return scaleConfig{cacheSize: 64 << 20, cacheEntry: 4 << 20}
}

// parse checks the settings and reads the keys file.
func (c *scaleConfig) parse() error {
	var err error
	if c.rateLimit != "off" {
		if c.rule, err = ratelimit.ParseRule(c.rateLimit); err != nil {
			return err
		}
	}
	if c.rateBurst != 0 {
		if c.rule.Off() || c.rateBurst < 0 || c.rateBurst > ratelimit.MaxCount {
			return fmt.Errorf("rate-burst %d: want 1 to %d, with --rate-limit", c.rateBurst, ratelimit.MaxCount)
		}
		c.rule.Burst = c.rateBurst
	}
	if c.rateKeys < bucketSlotsMin || c.rateKeys > 100_000_000 {
		return fmt.Errorf("rate-limit-keys %d: want %d to 100000000", c.rateKeys, bucketSlotsMin)
	}
	if c.fail, err = handlers.ParseRedisFail(c.redisFail); err != nil {
		return fmt.Errorf("redis-fail %q: %w", c.redisFail, err)
	}
	for name, u := range map[string]string{"redis": c.redisURL, "redis-cache": c.redisCache} {
		if _, err := resp.ParseURL(u); u != "" && err != nil {
			// The error names the wrong part, never the URL (it may hold
			// a password).
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if c.redisTimeout < time.Millisecond || c.redisTimeout > 10*time.Second {
		return fmt.Errorf("redis-timeout %v: want 1ms to 10s", c.redisTimeout)
	}
	if c.cacheSize > 1<<40 || c.cacheTTL < time.Second || c.cacheEntry < 1 || (c.cacheSize > 0 && c.cacheEntry > c.cacheSize) {
		return fmt.Errorf("cache: size at most 1TiB, ttl at least 1s, max entry from 1B to the cache size")
	}
	if c.cacheSize > 0 {
		if err := (cache.MemoryConfig{MaxBytes: int64(c.cacheSize), MaxEntry: int(c.cacheEntry), TTL: c.cacheTTL}).Validate(); err != nil {
			return err
		}
	}
	if c.apiKeys != "" {
		// A worker reads the keys its primary last accepted, never the
		// file: a worker restarted after a crash must not pick up an edit
		// that no reload has checked (nor a broken file, which would keep
		// it from starting).
		path := c.apiKeys
		if procpool.IsWorker() {
			if path = os.Getenv(keysSnapshotEnv); path == "" {
				return fmt.Errorf("api keys: the primary passed no %s: a worker never reads the file itself", keysSnapshotEnv)
			}
		}
		if c.keys, err = handlers.LoadAPIKeys(path); err != nil {
			if procpool.IsWorker() {
				return fmt.Errorf("api keys: the primary's snapshot: %w", err)
			}
			return err
		}
	}
	return nil
}

// keysSnapshotEnv names the file in which the primary passes its workers
// the keys it last accepted (a copy, 0400, in a 0700 directory of its own,
// removed when it exits).
const keysSnapshotEnv = "HYBRID_API_KEYS_SNAPSHOT"

var keysSnapshots struct {
	sync.Mutex
	dir     string
	n       int
	written []string
}

// keysEnv writes the keys this primary accepted to a new snapshot file and
// returns the environment that names it to the workers; none without keys.
// The two latest snapshots are kept: a worker starting during a reload may
// still be given the one before.
func (c *scaleConfig) keysEnv() ([]string, error) {
	if c.keys == nil {
		return nil, nil
	}
	ks := &keysSnapshots
	ks.Lock()
	defer ks.Unlock()
	if ks.dir == "" {
		dir, err := os.MkdirTemp("", fmt.Sprintf("hybrid-keys-%d-", os.Getpid()))
		if err != nil {
			return nil, fmt.Errorf("api keys: snapshot for the workers: %w", err)
		}
		ks.dir = dir
	}
	ks.n++
	path := filepath.Join(ks.dir, fmt.Sprintf("keys-%d", ks.n))
	if err := os.WriteFile(path, c.keys.Raw(), 0o400); err != nil {
		return nil, fmt.Errorf("api keys: snapshot for the workers: %w", err)
	}
	ks.written = append(ks.written, path)
	for len(ks.written) > 2 {
		os.Remove(ks.written[0])
		ks.written = ks.written[1:]
	}
	return []string{keysSnapshotEnv + "=" + path}, nil
}

// removeKeysSnapshots removes this primary's snapshots; it runs at exit.
func removeKeysSnapshots() {
	ks := &keysSnapshots
	ks.Lock()
	defer ks.Unlock()
	if ks.dir != "" {
		os.RemoveAll(ks.dir)
	}
}

// bucketSlotsMin is the smallest table: one bucket.
const bucketSlotsMin = 7

// The names procpool shares the table and the cache's socket by.
const (
	rateTableName = "hybrid-ratelimit"
	cacheSockEnv  = "HYBRID_CACHE_SOCKET"
)

// primaryShared is what the primary holds for its workers: the rate table
// (always made: 1 MiB, touched only when used, so that a reload can turn
// limits on) and the box's cache.
type primaryShared struct {
	table *ratelimit.Table
	cache *cache.Memory
	ln    net.Listener
	dir   string // the socket's
}

// startShared makes (or, after an upgrade, adopts) the rate table, and
// starts the cache's server, and says where the workers find them.
func startShared(c *scaleConfig, pool *procpool.Config, log *slog.Logger) (*primaryShared, error) {
	ps := &primaryShared{}
	if f := procpool.SharedFile(rateTableName); f != nil {
		t, err := ratelimit.OpenTable(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		ps.table = t
		pool.Shared = append(pool.Shared, f)
		if t.Slots() < c.rateKeys {
			log.Warn("rate limits: the table the old primary handed over is kept; --rate-limit-keys applies on a restart",
				"slots", t.Slots(), "rate_limit_keys", c.rateKeys)
		}
	} else {
		t, err := ratelimit.NewTable(c.rateKeys)
		if err != nil {
			return nil, err
		}
		ps.table = t
		pool.Shared = append(pool.Shared, t.File())
	}
	if c.redisURL != "" && c.redisURL == c.redisCache {
		log.Warn("--redis-cache is --redis: the cache's writes will evict the rate limits' keys (allkeys-lru) or make " +
			"their script fail (noeviction) once Redis is full; give the cache a Redis of its own")
	}
	os.Unsetenv(cacheSockEnv) // an old primary's, after an upgrade
	if c.cacheSize == 0 {
		return ps, nil
	}
	mem := cache.NewMemory(cache.MemoryConfig{MaxBytes: int64(c.cacheSize), MaxEntry: int(c.cacheEntry), TTL: c.cacheTTL})
	// A socket file in a directory of the primary's own (0700, in
	// $TMPDIR, where the workers make the isolated children's directories
	// too): only this uid, in this container, reaches it. An abstract
	// socket would be reachable from every container of a pod (they share
	// the network namespace), and a sidecar of the same uid could write
	// results. Serve also refuses a peer of another uid (SO_PEERCRED), and
	// isolated children may open no socket.
	dir, err := os.MkdirTemp("", fmt.Sprintf("hybrid-cache-%d-", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	ln, path, err := cache.Listen(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("cache: %w", err)
	}
	ps.cache, ps.ln, ps.dir = mem, ln, dir
	go mem.Serve(ln)
	os.Setenv(cacheSockEnv, path)
	return ps, nil
}

func (ps *primaryShared) close() {
	if ps.ln != nil {
		ps.ln.Close()
		os.RemoveAll(ps.dir)
	}
}

// workerShared builds a worker's gate and cache from the primary's table
// and socket and --redis.
func workerShared(c *scaleConfig, log *slog.Logger) (*handlers.Access, *handlers.ResultCache, func(), error) {
	var clients []*resp.Client
	closeAll := func() {
		for _, rdb := range clients {
			rdb.Close()
		}
	}
	dial := func(url string) *resp.Client {
		if url == "" {
			return nil
		}
		opt, _ := resp.ParseURL(url) // checked by parse
		// One bound for a whole call, connecting included. The client
		// retries only on a stale idle connection, before any byte of a
		// reply; the caller decides what a failure means.
		opt.Timeout = c.redisTimeout
		rdb := resp.New(opt)
		clients = append(clients, rdb)
		return rdb
	}
	rdb, cacheRDB := dial(c.redisURL), dial(c.redisCache)
	var access *handlers.Access
	if c.keys == nil && c.rule.Off() {
		if f := procpool.SharedFile(rateTableName); f != nil {
			f.Close() // no limits: the table's descriptor is not this worker's business
		}
	} else {
		f := procpool.SharedFile(rateTableName)
		if f == nil {
			closeAll()
			return nil, nil, nil, errors.New("rate limits: the primary shared no table (started by an older binary? restart it)")
		}
		t, err := ratelimit.OpenTable(f)
		f.Close()
		if err != nil {
			closeAll()
			return nil, nil, nil, err
		}
		access = &handlers.Access{Keys: c.keys, Rule: c.rule, Local: t, RedisFail: c.fail, Log: log}
		if rdb != nil {
			access.Remote = &breakerLimiter{ratelimit.NewRedis(rdb, ratelimit.RedisConfig{Timeout: c.redisTimeout}),
				newBreaker("rate limits", log)}
		}
	}
	var rc *handlers.ResultCache
	if path := os.Getenv(cacheSockEnv); path != "" && c.cacheSize > 0 {
		local := cache.NewClient(path, cache.ClientConfig{Timeout: 50 * time.Millisecond, MaxEntry: int(c.cacheEntry), Conns: 8})
		var remote cache.Store
		if cacheRDB != nil {
			remote = &breakerStore{cache.NewRedis(cacheRDB, cache.RedisConfig{Prefix: "hybrid:cache:", TTL: c.cacheTTL,
				MaxEntry: int(c.cacheEntry), Timeout: c.redisTimeout}), newBreaker("result cache", log)}
		}
		version, build := procpool.BuildInfo()
		rc = &handlers.ResultCache{Store: cache.NewTiered(local, remote), Box: local, Timeout: 50*time.Millisecond + c.redisTimeout,
			Version: version + " " + build, Log: log}
	}
	return access, rc, closeAll, nil
}

// addSharedHealth adds /health's "access" and "cache" entries: the
// worker's counts.
func addSharedHealth(st *workerStack) {
	// Written as the rest of /health is (internal/jsonw): encoding/json's
	// reflection here cost /health ~1.5 µs a request, a fifth of it.
	if a := st.exec.Access; a != nil {
		st.srv.AddHealth("access", func(b []byte) []byte {
			s := a.Stats()
			o := jsonw.Open(b)
			o.Uint("allowed", s.Allowed)
			o.Uint("rate_limited", s.Limited)
			o.Uint("unauthorized", s.Unauthorized)
			o.Uint("redis_errors", s.RedisErrors)
			o.Uint("redis_failed_open", s.FailedOpen)
			o.Uint("redis_failed_closed", s.FailedClosed)
			return o.Close()
		})
	}
	if rc := st.exec.Cache; rc != nil {
		// This worker's counts, and the box's cache's own (asked of the
		// primary, within 50 ms; absent if it does not answer).
		var box boxCounts
		st.srv.AddHealth("cache", func(b []byte) []byte {
			s := rc.Stats()
			o := jsonw.Open(b)
			o.Uint("not_modified", s.NotModified)
			o.Uint("hits_local", s.HitsLocal)
			o.Uint("hits_remote", s.HitsRemote)
			o.Uint("misses", s.Misses)
			o.Uint("stores", s.Stores)
			o.Uint("stores_dropped", s.StoreDropped)
			o.Uint("errors", s.Errors)
			if bs := box.get(rc.Box); bs != nil {
				o.Key("box")
				bo := jsonw.Open(o.B)
				bo.Int("entries", bs.Entries)
				bo.Int("bytes", bs.Bytes)
				bo.Uint("hits", bs.Hits)
				bo.Uint("misses", bs.Misses)
				bo.Uint("evictions", bs.Evictions)
				bo.Uint("expired", bs.Expired)
				bo.Uint("too_large", bs.TooLarge)
				o.B = bo.Close()
			}
			return o.Close()
		})
	}
}

// breaker fails Redis calls fast while Redis is failing: a Redis that
// hangs would otherwise add --redis-timeout to every request. After a
// failure it lets no call through for a pause (500 ms, doubling to 5 s
// while failures go on), then one probe; a success closes it. It WARNs
// when it opens and says when Redis is back.
type breaker struct {
	what string
	log  *slog.Logger

	mu        sync.Mutex
	openUntil time.Time // zero: closed
	pause     time.Duration
	probing   bool
}

// errBreakerOpen is a call not made.
var errBreakerOpen = errors.New("redis failing: not asked (breaker open)")

func newBreaker(what string, log *slog.Logger) *breaker { return &breaker{what: what, log: log} }

// allow reports whether a call may go to Redis now.
func (b *breaker) allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.openUntil.IsZero():
		return true
	case b.probing || time.Now().Before(b.openUntil):
		return false
	}
	b.probing = true
	return true
}

// done records a call's outcome.
func (b *breaker) done(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if err == nil {
		if !b.openUntil.IsZero() {
			b.log.Info("redis: back", "for", b.what)
		}
		b.openUntil, b.pause = time.Time{}, 0
		return
	}
	if b.openUntil.IsZero() {
		b.log.Warn("redis: failing; not asked for a while", "for", b.what, "err", err.Error())
	}
	b.pause = min(max(2*b.pause, 500*time.Millisecond), 5*time.Second)
	b.openUntil = time.Now().Add(b.pause)
}

// breakerLimiter is a RemoteLimiter behind a breaker.
type breakerLimiter struct {
	*ratelimit.Redis
	b *breaker
}

func (l *breakerLimiter) Allow(ctx context.Context, id string, r ratelimit.Rule) (ratelimit.Decision, error) {
	if !l.b.allow() {
		return ratelimit.Decision{}, fmt.Errorf("%w: %w", ratelimit.ErrUnavailable, errBreakerOpen)
	}
	d, err := l.Redis.Allow(ctx, id, r)
	l.b.done(err)
	return d, err
}

// breakerStore is a cache.Store behind a breaker.
type breakerStore struct {
	cache.Store
	b *breaker
}

func (s *breakerStore) Get(ctx context.Context, k cache.Key) ([]byte, bool, error) {
	if !s.b.allow() {
		return nil, false, errBreakerOpen
	}
	v, ok, err := s.Store.Get(ctx, k)
	s.b.done(err)
	return v, ok, err
}

func (s *breakerStore) Put(ctx context.Context, k cache.Key, v []byte) error {
	if !s.b.allow() {
		return errBreakerOpen
	}
	err := s.Store.Put(ctx, k, v)
	if errors.Is(err, cache.ErrTooLarge) {
		err = nil // Redis answered; the value was not for it
	}
	s.b.done(err)
	return err
}

// boxCounts keeps the box's cache's counts for /health, asked of the
// primary at most once a second (within 50 ms, on a connection of their
// own): /health is what load balancers poll, and must stay cheap and not
// wait on the primary. A request that finds them being asked shows the
// last ones.
type boxCounts struct {
	mu   sync.Mutex
	at   time.Time
	last *boxStats
}

func (bc *boxCounts) get(c *cache.Client) *boxStats {
	if !bc.mu.TryLock() {
		return nil
	}
	defer bc.mu.Unlock()
	if time.Since(bc.at) < time.Second {
		return bc.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	bc.at = time.Now()
	if s, err := c.ServerStats(ctx); err == nil {
		bc.last = &boxStats{Entries: s.Entries, Bytes: s.Bytes, Hits: s.Hits, Misses: s.Misses,
			Evictions: s.Evictions, Expired: s.Expired, TooLarge: s.TooLarge}
	}
	return bc.last
}

// boxStats is /health's view of the box's cache.
type boxStats struct {
	Entries   int64  `json:"entries"`
	Bytes     int64  `json:"bytes"`
	Hits      uint64 `json:"hits"`
	Misses    uint64 `json:"misses"`
	Evictions uint64 `json:"evictions"`
	Expired   uint64 `json:"expired"`
	TooLarge  uint64 `json:"too_large"`
}

// sweepTemp removes the temporary directories that hybrid processes killed
// before their cleanup (kill -9, an OOM kill) left in $TMPDIR: an isolator's
// working directory, the cache's socket, the keys' snapshots. Each names
// its process; one whose process is gone is removed. Directories of live
// processes, and those this user may not remove, stay. (A $TMPDIR shared
// with another pid namespace would make its live processes look gone: give
// each container its own /tmp, as containers have.)
func sweepTemp(log *slog.Logger) {
	removed := 0
	for _, kind := range []string{"isolate", "cache", "keys"} {
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "hybrid-"+kind+"-*"))
		for _, dir := range dirs {
			// "hybrid-<kind>-<pid>-<random>"; an older build's names
			// carry no pid and are left alone.
			rest := strings.TrimPrefix(filepath.Base(dir), "hybrid-"+kind+"-")
			p, _, ok := strings.Cut(rest, "-")
			pid, err := strconv.Atoi(p)
			if !ok || err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
				continue
			}
			if os.RemoveAll(dir) == nil {
				removed++
			}
		}
	}
	if removed > 0 {
		log.Info("removed the temporary directories of hybrid processes that are gone", "dirs", removed, "in", os.TempDir())
	}
}
