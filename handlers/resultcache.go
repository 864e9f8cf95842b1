package handlers

import (
	"bytes"
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hybrid-server/hybrid/cache"
	"github.com/valyala/fasthttp"
)

// ResultCache caches the outputs of Cacheable workloads by content: the key
// is the workload, its params and a digest of its input (cache.NewKey), so a
// result is served to whoever sends the same request, and its ETag is the
// key. The store is the box's (the primary's, shared by every worker),
// then Redis when --redis is set (cache.Tiered).
//
// The request's path with a cache: the body is read and checked as
// without one; then If-None-Match naming the key's ETag gets 304 (no work,
// no lookup: the ETag is a function of the request, so the client's copy
// is current whatever the cache holds); a hit is answered from the cache;
// a miss runs the workload and stores its output after the response. A
// request with Cache-Control: no-cache skips the lookup (and no-store the
// store as well).
type ResultCache struct {
	Store *cache.Tiered
	// Box is the box's cache (the primary's), whose own counts (evictions,
	// entries, bytes) /health shows; nil: none shown.
	Box *cache.Client
	// Timeout bounds a lookup; past it the request runs as a miss.
	Timeout time.Duration
	// Version is the build's (procpool.BuildInfo): part of every key, so
	// that a new build's results never answer for an old one's, nor its
	// ETags.
	Version string
	Log     *slog.Logger

	notModified, hitsLocal, hitsRemote, misses, errors, stores, storeDropped atomic.Uint64
	storing                                                                  atomic.Int64 // bytes
}

// maxStoring bounds the bytes of the stores in flight after their
// responses; more are dropped (counted): a slow store must hold neither
// goroutines nor results without bound.
const maxStoring = 16 << 20

// xCacheHit is the X-Cache header of a hit, by the tier that answered: the
// box's cache (its primary's) or Redis.
var xCacheHit = map[string]string{"local": "hit-box", "remote": "hit-redis"}

type cacheKey struct {
	key cache.Key
	ok  bool
}

// lookup answers the request from the cache if it can (done: the response
// is written); else it returns the key to store the result under.
func (c *ResultCache) lookup(ctx *fasthttp.RequestCtx, w *Workload, p Params, input []byte) (cacheKey, bool) {
	// The key names the build, and the tenant when keys are set: one
	// client's results (and whether some input was sent before) are never
	// another's to learn.
	scope := w.Name + "\x00" + c.Version
	if tenant, ok := ctx.UserValue(tenantKey{}).(string); ok {
		scope += "\x00" + tenant
	}
	k := cache.NewKey(scope, p, input)
	etag := k.ETag()
	// "*" would match an input never seen; hybrid's tags have no '*'.
	if inm := ctx.Request.Header.Peek(fasthttp.HeaderIfNoneMatch); len(inm) > 0 && bytes.IndexByte(inm, '*') < 0 &&
		cache.MatchETag(inm, etag) {
		c.notModified.Add(1)
		tag(ctx, etag)
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		ctx.Response.Header.Set("X-Cache", "revalidated")
		return cacheKey{}, true
	}
	// Cache-Control: no-cache (or no-store) asks for the work itself.
	if cc := ctx.Request.Header.Peek(fasthttp.HeaderCacheControl); len(cc) > 0 &&
		(bytes.Contains(cc, []byte("no-cache")) || bytes.Contains(cc, []byte("no-store"))) {
		c.misses.Add(1)
		ctx.Response.Header.Set("X-Cache", "miss")
		return cacheKey{key: k, ok: !bytes.Contains(cc, []byte("no-store"))}, false
	}
	lctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	v, tier, err := c.Store.GetFrom(lctx, k)
	cancel()
	if err != nil {
		c.errors.Add(1)
	}
	switch tier {
	case "local":
		c.hitsLocal.Add(1)
	case "remote":
		c.hitsRemote.Add(1)
	}
	if tier != "" {
		tag(ctx, etag)
		ctx.SetContentType(w.contentType(p))
		ctx.Response.Header.Set("X-Cache", xCacheHit[tier])
		ctx.Response.SetBodyRaw(v)
		return cacheKey{}, true
	}
	c.misses.Add(1)
	ctx.Response.Header.Set("X-Cache", "miss")
	return cacheKey{key: k, ok: true}, false
}

// tag marks a response as the result of its request: its ETag, and that
// a shared cache (a CDN) must not keep it, since it answers a POST whose
// body the cache does not key on; a client may keep it and revalidate.
func tag(ctx *fasthttp.RequestCtx, etag string) {
	ctx.Response.Header.Set(fasthttp.HeaderETag, etag)
	ctx.Response.Header.Set(fasthttp.HeaderCacheControl, "private, no-cache")
}

// store puts out under key on a goroutine of its own, so that the response
// does not wait for it. out is the task's own and never changes.
func (c *ResultCache) store(ctx *fasthttp.RequestCtx, key cacheKey, out []byte) {
	tag(ctx, key.key.ETag())
	n := int64(len(out))
	if c.storing.Add(n) > maxStoring {
		c.storing.Add(-n)
		c.storeDropped.Add(1)
		return
	}
	go func() {
		defer c.storing.Add(-n)
		ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
		defer cancel()
		if err := c.Store.Put(ctx, key.key, out); err != nil {
			c.errors.Add(1)
			return
		}
		c.stores.Add(1)
	}()
}

// CacheStats are a worker's cache counts, for /health and /metrics.
type CacheStats struct {
	NotModified  uint64 `json:"not_modified"`
	HitsLocal    uint64 `json:"hits_local"`
	HitsRemote   uint64 `json:"hits_remote"`
	Misses       uint64 `json:"misses"`
	Stores       uint64 `json:"stores"`
	StoreDropped uint64 `json:"stores_dropped"`
	Errors       uint64 `json:"errors"`
}

// Stats returns the counts.
func (c *ResultCache) Stats() CacheStats {
	return CacheStats{NotModified: c.notModified.Load(), HitsLocal: c.hitsLocal.Load(), HitsRemote: c.hitsRemote.Load(),
		Misses: c.misses.Load(), Stores: c.stores.Load(), StoreDropped: c.storeDropped.Load(), Errors: c.errors.Load()}
}
