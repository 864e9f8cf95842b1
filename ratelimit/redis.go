package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hybrid-server/hybrid/internal/resp"
)

// ErrUnavailable wraps a Redis failure: the caller fails open or closed.
var ErrUnavailable = errors.New("ratelimit: redis unavailable")

// gcraScript is one decision, atomic in Redis, on the server's clock in
// microseconds. KEYS[1] holds the client's TAT; ARGV are T and Burst·T in
// µs. It returns {allowed, tat, now}. The key lives until its TAT is past,
// when it is the same as absent.
var gcraScript = resp.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat + interval - now > tolerance then
  return {0, tat, now}
end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
return {1, tat, now}
`)

// RedisConfig configures a Redis limiter.
type RedisConfig struct {
	// Prefix is prepended to every key ("hybrid:rl:").
	Prefix string
	// Timeout bounds each decision, the round trip included.
	Timeout time.Duration
}

// Redis decides against a Redis server shared by every host.
type Redis struct {
	rdb resp.Doer
	cfg RedisConfig
}

// NewRedis returns a limiter on rdb: a *resp.Client (which stays the
// caller's to close), or a test's fake. Each decision is one EVALSHA (an
// EVAL the first time a server sees the script).
func NewRedis(rdb resp.Doer, cfg RedisConfig) *Redis {
	if cfg.Prefix == "" {
		cfg.Prefix = "hybrid:rl:"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 100 * time.Millisecond
	}
	return &Redis{rdb: rdb, cfg: cfg}
}

// Allow decides one request of the client named id under r. An error wraps
// ErrUnavailable.
func (l *Redis) Allow(ctx context.Context, id string, r Rule) (Decision, error) {
	if r.Off() {
		return Decision{Allowed: true}, nil
	}
	interval, tolerance := r.ns()
	us := func(ns int64) int64 { return max(ns/1000, 1) }
	ctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	defer cancel()
	reply, err := gcraScript.Run(ctx, l.rdb, []string{l.cfg.Prefix + id}, us(interval), us(tolerance))
	if err != nil {
		return Decision{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	v, err := reply.Int64s()
	if err != nil {
		return Decision{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if len(v) != 3 {
		return Decision{}, fmt.Errorf("%w: the script answered %d values", ErrUnavailable, len(v))
	}
	return decision(v[0] == 1, v[1]*1000, v[2]*1000, us(interval)*1000, us(tolerance)*1000), nil
}
