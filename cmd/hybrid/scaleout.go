package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hybrid-server/hybrid/cache"
	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/ratelimit"
	"github.com/redis/go-redis/v9"
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
	fs.StringVar(&c.redisURL, "redis", "", "redis://[:password@]host:port/db (or rediss://) shared by every instance: rate limits and the result cache across hosts")
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
	if c.redisURL != "" {
		if _, err := redis.ParseURL(c.redisURL); err != nil {
			// The URL may hold a password: name the scheme's rule, not it.
			return errors.New("redis: want redis://[:password@]host:port/db or rediss://…")
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
		if c.keys, err = handlers.LoadAPIKeys(c.apiKeys); err != nil {
			return err
		}
	}
	return nil
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
	os.Unsetenv(cacheSockEnv) // an old primary's, after an upgrade
	if c.cacheSize == 0 {
		return ps, nil
	}
	mem := cache.NewMemory(cache.MemoryConfig{MaxBytes: int64(c.cacheSize), MaxEntry: int(c.cacheEntry), TTL: c.cacheTTL})
	// An abstract socket: no file to place or remove (a read-only root
	// needs none), and gone with the primary. Serve refuses a peer of
	// another uid (SO_PEERCRED), and isolated children may open no socket.
	var rnd [8]byte
	rand.Read(rnd[:])
	name := fmt.Sprintf("@hybrid-cache-%d-%x", os.Getpid(), rnd)
	ln, err := net.Listen("unix", name)
	if err != nil {
		return nil, fmt.Errorf("cache: listen on %s: %w", name, err)
	}
	ps.cache, ps.ln = mem, ln
	go mem.Serve(ln)
	os.Setenv(cacheSockEnv, name)
	return ps, nil
}

func (ps *primaryShared) close() {
	if ps.ln != nil {
		ps.ln.Close()
	}
}

// workerShared builds a worker's gate and cache from the primary's table
// and socket and --redis.
func workerShared(c *scaleConfig, log *slog.Logger) (*handlers.Access, *handlers.ResultCache, func(), error) {
	var rdb *redis.Client
	closeAll := func() {
		if rdb != nil {
			rdb.Close()
		}
	}
	if c.redisURL != "" {
		opt, _ := redis.ParseURL(c.redisURL) // checked by parse
		opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout = c.redisTimeout, c.redisTimeout, c.redisTimeout
		opt.PoolTimeout = c.redisTimeout
		opt.MaxRetries = -1 // a retry doubles the wait; the caller decides what a failure means
		opt.ContextTimeoutEnabled = true
		rdb = redis.NewClient(opt)
		redis.SetLogger(redisLogger{log})
	}
	var access *handlers.Access
	if c.keys != nil || !c.rule.Off() {
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
			access.Remote = ratelimit.NewRedis(rdb, ratelimit.RedisConfig{Timeout: c.redisTimeout})
		}
	}
	var rc *handlers.ResultCache
	if path := os.Getenv(cacheSockEnv); path != "" && c.cacheSize > 0 {
		local := cache.NewClient(path, cache.ClientConfig{Timeout: 50 * time.Millisecond, MaxEntry: int(c.cacheEntry), Conns: 8})
		var remote cache.Store
		if rdb != nil {
			remote = cache.NewRedis(rdb, cache.RedisConfig{Prefix: "hybrid:cache:", TTL: c.cacheTTL,
				MaxEntry: int(c.cacheEntry), Timeout: c.redisTimeout})
		}
		rc = &handlers.ResultCache{Store: cache.NewTiered(local, remote), Timeout: 50*time.Millisecond + c.redisTimeout, Log: log}
	}
	return access, rc, closeAll, nil
}

// redisLogger puts go-redis' own messages (a failed dial, a pool's
// trouble) in the log at debug: the gate and the cache count and WARN
// failures themselves, once a second.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug("redis: " + strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// addSharedHealth adds /health's "access" and "cache" entries: the
// worker's counts.
func addSharedHealth(st *workerStack) {
	if a := st.exec.Access; a != nil {
		st.srv.AddHealth("access", func(b []byte) []byte {
			j, _ := json.Marshal(a.Stats())
			return append(b, j...)
		})
	}
	if rc := st.exec.Cache; rc != nil {
		st.srv.AddHealth("cache", func(b []byte) []byte {
			j, _ := json.Marshal(rc.Stats())
			return append(b, j...)
		})
	}
}
