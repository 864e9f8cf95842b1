package cache

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/internal/resp"
)

// Defaults of [RedisConfig] beyond those it shares with the other stores.
const (
	// DefaultRedisPrefix begins every key the Redis store writes.
	DefaultRedisPrefix = "hybrid:cache:"
	// DefaultRedisTTL is how long Redis keeps a result (SET … PX).
	DefaultRedisTTL = 24 * time.Hour
)

// RedisConfig configures a [Redis] store. Zero fields take the defaults.
type RedisConfig struct {
	// Prefix begins each key: prefix + the key in hex. Give each
	// deployment that must not share results a prefix of its own.
	// Default: DefaultRedisPrefix.
	Prefix string
	// TTL is each value's expiry in Redis. Default: DefaultRedisTTL.
	TTL time.Duration
	// MaxEntry is the largest value stored or read back. Default:
	// DefaultMaxEntry.
	MaxEntry int
	// Timeout bounds each call, on top of the client's own Timeout.
	// Default: DefaultTimeout.
	Timeout time.Duration
}

func (c RedisConfig) withDefaults() RedisConfig {
	if c.Prefix == "" {
		c.Prefix = DefaultRedisPrefix
	}
	if c.TTL == 0 {
		c.TTL = DefaultRedisTTL
	}
	if c.MaxEntry == 0 {
		c.MaxEntry = DefaultMaxEntry
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// Validate reports a field out of range (zero fields are the defaults).
func (c RedisConfig) Validate() error {
	if c.TTL < 0 || c.MaxEntry < 0 || c.Timeout < 0 {
		return fmt.Errorf("cache: redis TTL %v, max entry %d, timeout %v: want each > 0 (or 0 for the default)",
			c.TTL, c.MaxEntry, c.Timeout)
	}
	if c.TTL > 0 && c.TTL < time.Millisecond {
		return fmt.Errorf("cache: redis TTL %v: want at least 1ms (PX counts milliseconds)", c.TTL)
	}
	return nil
}

// Redis is a [Store] in Redis, shared by every host that uses the same
// server and prefix. A value is stored with SET prefix+hex(key) value PX
// TTL and read with GETRANGE prefix+hex(key) 0 MaxEntry, so a value over
// MaxEntry (written by another deployment, or by hand) costs at most
// MaxEntry+1 bytes to find out, and is an error, never returned. Redis
// answers GETRANGE on a missing key with an empty string, so an empty
// value is never stored: its Put is a no-op, its Get a miss.
//
// Each call runs under context.WithTimeout(ctx, Timeout). A *resp.Client
// puts that deadline on its connection, so a Redis that does not answer
// fails the call by then, and the call leaves nothing running behind it;
// the client's PoolSize bounds the connections, and a call that finds
// them all busy waits for one only until the same deadline.
//
// Lifetimes: Get returns a value of its own; Put does not keep v.
type Redis struct {
	rdb resp.Doer
	cfg RedisConfig

	hits, misses, puts, tooLarge, errs atomic.Uint64
}

// NewRedis returns a Redis store over rdb, a *resp.Client that stays the
// caller's to close (or a test's fake). It panics if rdb is nil or
// cfg.Validate fails.
func NewRedis(rdb resp.Doer, cfg RedisConfig) *Redis {
	if rdb == nil {
		panic("cache: NewRedis with a nil client")
	}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	return &Redis{rdb: rdb, cfg: cfg.withDefaults()}
}

func (r *Redis) key(k Key) string {
	b := make([]byte, 0, len(r.cfg.Prefix)+2*len(k))
	b = append(b, r.cfg.Prefix...)
	b = hex.AppendEncode(b, k[:])
	return string(b)
}

// Get reads k's value from Redis.
func (r *Redis) Get(ctx context.Context, k Key) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	reply, err := r.rdb.Do(ctx, "GETRANGE", r.key(k), 0, r.cfg.MaxEntry)
	var v []byte
	if err == nil {
		v, err = reply.Bytes()
	}
	switch {
	case err != nil:
		r.errs.Add(1)
		return nil, false, fmt.Errorf("cache: redis get: %w", err)
	case len(v) == 0:
		r.misses.Add(1)
		return nil, false, nil
	case len(v) > r.cfg.MaxEntry:
		r.errs.Add(1)
		return nil, false, fmt.Errorf("cache: redis get: a value over %d bytes: %w", r.cfg.MaxEntry, ErrTooLarge)
	}
	r.hits.Add(1)
	return v, true, nil
}

// Put stores v under k with the TTL. An empty v is not stored.
func (r *Redis) Put(ctx context.Context, k Key, v []byte) error {
	if len(v) > r.cfg.MaxEntry {
		r.tooLarge.Add(1)
		return ErrTooLarge
	}
	if len(v) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if _, err := r.rdb.Do(ctx, "SET", r.key(k), v, "PX", r.cfg.TTL.Milliseconds()); err != nil {
		r.errs.Add(1)
		return fmt.Errorf("cache: redis put: %w", err)
	}
	r.puts.Add(1)
	return nil
}

// Stats returns the counters: Hits, Misses, Puts, TooLarge and Errors.
func (r *Redis) Stats() Stats {
	return Stats{Hits: r.hits.Load(), Misses: r.misses.Load(), Puts: r.puts.Load(),
		TooLarge: r.tooLarge.Load(), Errors: r.errs.Load()}
}

var _ Store = (*Redis)(nil)
