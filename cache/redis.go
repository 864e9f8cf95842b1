package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of [RedisConfig] beyond those it shares with the other stores.
const (
	// DefaultRedisPrefix begins every key the Redis store writes.
	DefaultRedisPrefix = "hybrid:cache:"
	// DefaultRedisTTL is how long Redis keeps a result (SET … PX).
	DefaultRedisTTL = 24 * time.Hour
	// DefaultMaxInFlight bounds the calls to Redis in progress at once
	// (see RedisConfig.MaxInFlight).
	DefaultMaxInFlight = 256
)

// ErrBusy: a Redis call was refused at once because MaxInFlight calls
// were in progress already, which happens when Redis stops answering.
var ErrBusy = errors.New("cache: redis: too many calls in flight")

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
	// Timeout bounds each call. Default: DefaultTimeout.
	Timeout time.Duration
	// MaxInFlight bounds the calls in progress; one more fails at once
	// with ErrBusy. A call abandoned at its timeout may go on in the
	// background until the client's own timeouts end it, and this bound
	// keeps a Redis that hangs from piling those up. Default:
	// DefaultMaxInFlight.
	MaxInFlight int
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
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	return c
}

// Validate reports a field out of range (zero fields are the defaults).
func (c RedisConfig) Validate() error {
	if c.TTL < 0 || c.MaxEntry < 0 || c.Timeout < 0 || c.MaxInFlight < 0 {
		return fmt.Errorf("cache: redis TTL %v, max entry %d, timeout %v, max in flight %d: want each > 0 (or 0 for the default)",
			c.TTL, c.MaxEntry, c.Timeout, c.MaxInFlight)
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
// Each call runs under context.WithTimeout(ctx, Timeout) and returns by
// then whatever the client does. Build the client with
// ContextTimeoutEnabled (context_timeout_enabled=true in a URL) so that
// it also gives the connection up at that deadline; without it, go-redis
// keeps its own read and write timeouts (3 s by default) and a call that
// Redis does not answer runs on in the background until they end, at
// most MaxInFlight of them.
//
// Lifetimes: Get returns a value of its own; Put does not keep v.
type Redis struct {
	rdb      redis.UniversalClient
	cfg      RedisConfig
	inflight chan struct{}

	hits, misses, puts, tooLarge, errs atomic.Uint64
}

// NewRedis returns a Redis store over rdb, which stays the caller's to
// close. It panics if rdb is nil or cfg.Validate fails.
func NewRedis(rdb redis.UniversalClient, cfg RedisConfig) *Redis {
	if rdb == nil {
		panic("cache: NewRedis with a nil client")
	}
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg = cfg.withDefaults()
	return &Redis{rdb: rdb, cfg: cfg, inflight: make(chan struct{}, cfg.MaxInFlight)}
}

func (r *Redis) key(k Key) string {
	b := make([]byte, 0, len(r.cfg.Prefix)+2*len(k))
	b = append(b, r.cfg.Prefix...)
	b = hex.AppendEncode(b, k[:])
	return string(b)
}

// Get reads k's value from Redis.
func (r *Redis) Get(ctx context.Context, k Key) ([]byte, bool, error) {
	key := r.key(k)
	// got is written by the call's goroutine and read only once it is
	// done: a call abandoned at the deadline writes a variable nobody
	// reads.
	var got []byte
	err := r.bounded(ctx, func(ctx context.Context) error {
		var err error
		got, err = r.rdb.GetRange(ctx, key, 0, int64(r.cfg.MaxEntry)).Bytes()
		return err
	})
	var v []byte
	if err == nil {
		v = got
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
	key := r.key(k)
	err := r.bounded(ctx, func(ctx context.Context) error {
		return r.rdb.Do(ctx, "set", key, v, "px", r.cfg.TTL.Milliseconds()).Err()
	})
	if err != nil {
		r.errs.Add(1)
		return fmt.Errorf("cache: redis put: %w", err)
	}
	r.puts.Add(1)
	return nil
}

// bounded runs call under the timeout and returns by its end, leaving a
// call that has not returned to finish in the background.
func (r *Redis) bounded(ctx context.Context, call func(context.Context) error) error {
	select {
	case r.inflight <- struct{}{}:
	default:
		return ErrBusy
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() { <-r.inflight }()
		done <- call(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats returns the counters: Hits, Misses, Puts, TooLarge and Errors.
func (r *Redis) Stats() Stats {
	return Stats{Hits: r.hits.Load(), Misses: r.misses.Load(), Puts: r.puts.Load(),
		TooLarge: r.tooLarge.Load(), Errors: r.errs.Load()}
}

var _ Store = (*Redis)(nil)
