package handlers

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/ratelimit"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// Access is the gate every workload request passes before its mode is
// picked: the API key (401 without a valid one, when keys are set), then the
// client's rate limit (429 over it). /health and /ready stay open: they
// are not workloads.
//
// A client is its key's name when keys are set, else its IP address.
// Limits are decided by the box's shared table, or by Redis when --redis is
// set; when Redis fails, RedisFail decides.
type Access struct {
	Keys   *APIKeys       // nil: no keys, every client is anonymous
	Rule   ratelimit.Rule // the limit of a client whose key names none; zero: none
	Local  *ratelimit.Table
	Remote RemoteLimiter // nil: the box's table decides
	// RedisFail is what a request gets while Redis cannot decide.
	RedisFail RedisFail
	Log       *slog.Logger

	allowed, limited, unauthorized, redisErrors, failedOpen, failedClosed atomic.Uint64
	lastWarn                                                              atomic.Int64
}

// RemoteLimiter decides across hosts: a *ratelimit.Redis, possibly behind
// a breaker that fails fast while Redis is failing.
type RemoteLimiter interface {
	Allow(ctx context.Context, id string, r ratelimit.Rule) (ratelimit.Decision, error)
}

// RedisFail is --redis-fail.
type RedisFail string

const (
	// FailLocal decides by the box's own table while Redis is down: the
	// limit then holds per box (at most hosts × the limit in all). The
	// table is charged with every request Redis admits, so that it knows
	// the box's share when Redis goes away and an outage is no fresh burst.
	FailLocal RedisFail = "local"
	// FailOpen admits every request while Redis is down.
	FailOpen RedisFail = "open"
	// FailClosed refuses every limited request while Redis is down (503).
	FailClosed RedisFail = "closed"
)

// ParseRedisFail parses --redis-fail.
func ParseRedisFail(s string) (RedisFail, error) {
	switch f := RedisFail(s); f {
	case FailLocal, FailOpen, FailClosed:
		return f, nil
	}
	return "", errors.New("want local, open or closed")
}

// Error codes of the gate.
const (
	CodeUnauthorized       = "unauthorized"           // 401
	CodeRateLimited        = "rate_limited"           // 429
	CodeRateLimitUnhealthy = "rate_limit_unavailable" // 503, --redis-fail closed
)

// tenantKey holds the name of the request's API key, which scopes its
// cached results (ResultCache).
type tenantKey struct{}

// accessKey marks a request the gate has passed: an Expect: 100-continue
// request is decided once, from its headers, not again with its body.
type accessKey struct{}

// check runs the gate; false: it has written the refusal.
func (a *Access) check(ctx *fasthttp.RequestCtx) bool {
	if a == nil {
		return true
	}
	if ctx.UserValue(accessKey{}) != nil {
		return true
	}
	id, rule := "", a.Rule
	if a.Keys != nil {
		k := a.Keys.lookup(presentedKey(ctx))
		if k == nil {
			a.unauthorized.Add(1)
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="hybrid"`)
			server.WriteError(ctx, server.Errorf(fasthttp.StatusUnauthorized, CodeUnauthorized,
				"a valid API key is required: Authorization: Bearer KEY or X-API-Key: KEY"))
			return false
		}
		id = "k:" + k.Name
		ctx.SetUserValue(tenantKey{}, k.Name)
		if k.HasRule {
			rule = k.Rule
		}
	}
	if !rule.Off() {
		if id == "" {
			id = "ip:" + ctx.RemoteIP().String()
		}
		d, ok := a.decide(id, rule)
		if !ok {
			a.failedClosed.Add(1)
			server.WriteError(ctx, server.Errorf(fasthttp.StatusServiceUnavailable, CodeRateLimitUnhealthy,
				"the rate limiter cannot decide (Redis is unavailable); retry"))
			return false
		}
		setRateHeaders(ctx, rule, d)
		if !d.Allowed {
			a.limited.Add(1)
			retry := int((d.RetryAfter + time.Second - 1) / time.Second)
			ctx.Response.Header.Set("Retry-After", strconv.Itoa(retry))
			server.WriteError(ctx, server.Errorf(fasthttp.StatusTooManyRequests, CodeRateLimited,
				"rate limit of %s exceeded; retry in %d s", rule, retry))
			return false
		}
	}
	a.allowed.Add(1)
	ctx.SetUserValue(accessKey{}, true)
	return true
}

// decide asks Redis, or the box's table; ok is false only when Redis
// failed and RedisFail is closed.
func (a *Access) decide(id string, r ratelimit.Rule) (ratelimit.Decision, bool) {
	if a.Remote != nil {
		d, err := a.Remote.Allow(context.Background(), id, r)
		if err == nil {
			if d.Allowed && a.Local != nil {
				a.Local.Allow(id, r) // the box's share, for an outage
			}
			return d, true
		}
		a.redisErrors.Add(1)
		a.warn(err)
		switch a.RedisFail {
		case FailOpen:
			a.failedOpen.Add(1)
			return ratelimit.Decision{Allowed: true, Remaining: r.Count}, true
		case FailClosed:
			return ratelimit.Decision{}, false
		}
	}
	return a.Local.Allow(id, r), true
}

// warn logs a Redis failure at most once a second per worker.
func (a *Access) warn(err error) {
	now := time.Now().UnixNano()
	last := a.lastWarn.Load()
	if now-last < int64(time.Second) || !a.lastWarn.CompareAndSwap(last, now) {
		return
	}
	a.Log.Warn("rate limit: Redis failed; deciding by --redis-fail", "redis_fail", string(a.RedisFail),
		"err", err.Error(), "errors_so_far", a.redisErrors.Load())
}

// presentedKey is the key of Authorization: Bearer, else X-API-Key.
func presentedKey(ctx *fasthttp.RequestCtx) []byte {
	if auth := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization); len(auth) > 7 &&
		bytes.EqualFold(auth[:7], []byte("bearer ")) {
		return bytes.TrimSpace(auth[7:])
	}
	return ctx.Request.Header.Peek("X-API-Key")
}

// setRateHeaders writes the IETF fields (draft-ietf-httpapi-ratelimit-
// headers-10): the policy, a quota q over a window w in seconds, and the
// current state, r remaining and t seconds until the quota is whole again.
func setRateHeaders(ctx *fasthttp.RequestCtx, r ratelimit.Rule, d ratelimit.Decision) {
	var buf [96]byte
	b := append(buf[:0], `"default";q=`...)
	b = strconv.AppendInt(b, int64(r.Count), 10)
	b = append(b, ";w="...)
	b = strconv.AppendInt(b, int64(r.Period/time.Second), 10)
	ctx.Response.Header.SetBytesV("RateLimit-Policy", b)
	b = append(buf[:0], `"default";r=`...)
	b = strconv.AppendInt(b, int64(d.Remaining), 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, int64((d.Reset+time.Second-1)/time.Second), 10)
	ctx.Response.Header.SetBytesV("RateLimit", b)
}

// AccessStats are the gate's counts, for /health and /metrics.
type AccessStats struct {
	Allowed      uint64 `json:"allowed"`
	Limited      uint64 `json:"rate_limited"`
	Unauthorized uint64 `json:"unauthorized"`
	RedisErrors  uint64 `json:"redis_errors"`
	FailedOpen   uint64 `json:"redis_failed_open"`
	FailedClosed uint64 `json:"redis_failed_closed"`
}

// Stats returns the counts.
func (a *Access) Stats() AccessStats {
	return AccessStats{Allowed: a.allowed.Load(), Limited: a.limited.Load(), Unauthorized: a.unauthorized.Load(),
		RedisErrors: a.redisErrors.Load(), FailedOpen: a.failedOpen.Load(), FailedClosed: a.failedClosed.Load()}
}
