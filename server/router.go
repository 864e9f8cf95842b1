package server

import (
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/valyala/fasthttp"
)

// Router dispatches on exact path, then method. An unknown path is a JSON
// 404, a known path with another method a JSON 405 with an Allow header, and
// a panic in a handler a JSON 500 with its stack in the log: a bad request
// never takes the worker down.
type Router struct {
	log      *slog.Logger
	routes   map[string]map[string]route
	prefixes []string          // HandlePrefix paths, longest first
	metrics  *metrics.Requests // nil: no metrics (the admin's router)
}

type route struct {
	h     fasthttp.RequestHandler
	early Early
	stats *metrics.Route // the metrics of its pattern; nil without metrics
}

// Early is a route's answer from the request's headers alone, for a client
// that asks before it sends its body (Expect: 100-continue). It reports
// whether the body is wanted; if not, it has written the final response,
// which the client gets instead of 100 Continue and without uploading.
// The route's handler runs afterwards only if the body is wanted, and
// decides again: Early must be the handler's own decision from the
// headers, not a second one.
type Early func(ctx *fasthttp.RequestCtx) bool

// NewRouter returns an empty router that logs handler panics to log.
func NewRouter(log *slog.Logger) *Router {
	return &Router{log: log, routes: map[string]map[string]route{}}
}

// Handle registers h for method and path. HEAD is served by GET handlers.
func (r *Router) Handle(method, path string, h fasthttp.RequestHandler) {
	r.HandleEarly(method, path, h, nil)
}

// HandleEarly registers h for method and path, with early as its answer
// from the headers to Expect: 100-continue (nil: always continue).
func (r *Router) HandleEarly(method, path string, h fasthttp.RequestHandler, early Early) {
	if r.routes[path] == nil {
		r.routes[path] = map[string]route{}
	}
	r.routes[path][method] = route{h: h, early: early, stats: r.metrics.Route(path)}
}

// HandlePrefix registers h for method and every path under prefix (which
// ends in "/"), such as "/v1/hash/" for /v1/hash/{algo}. [PathParam] returns
// the rest of the path. An exact route wins over a prefix.
func (r *Router) HandlePrefix(method, prefix string, h fasthttp.RequestHandler) {
	r.HandlePrefixEarly(method, prefix, h, nil)
}

// HandlePrefixEarly is HandlePrefix with an [Early] answer.
func (r *Router) HandlePrefixEarly(method, prefix string, h fasthttp.RequestHandler, early Early) {
	if !strings.HasSuffix(prefix, "/") {
		panic("server: HandlePrefix: prefix must end in /: " + prefix)
	}
	if r.routes[prefix] == nil {
		r.prefixes = append(r.prefixes, prefix)
		slices.SortFunc(r.prefixes, func(a, b string) int { return len(b) - len(a) })
	}
	r.HandleEarly(method, prefix, h, early)
}

// PathParam returns the part of the request path after prefix.
func PathParam(ctx *fasthttp.RequestCtx, prefix string) string {
	return strings.TrimPrefix(string(ctx.Path()), prefix)
}

func (r *Router) lookup(path []byte) map[string]route {
	if m := r.routes[string(path)]; m != nil {
		return m
	}
	for _, p := range r.prefixes {
		if len(path) > len(p) && string(path[:len(p)]) == p {
			return r.routes[p]
		}
	}
	return nil
}

// resolve finds the request's route, or writes the JSON 400 for a target
// it refuses (framing.go), 404 or 405.
func (r *Router) resolve(ctx *fasthttp.RequestCtx) (route, bool) {
	if err := checkTarget(ctx); err != nil {
		WriteError(ctx, err)
		return route{}, false
	}
	methods := r.lookup(ctx.Path())
	if methods == nil {
		// A 404 counts as unmatched, whatever the path: its label is not the
		// client's to choose.
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "no route for %s %s",
			Quote(string(ctx.Method())), Quote(string(ctx.Path()))))
		return route{}, false
	}
	method := string(ctx.Method())
	rt, ok := methods[method]
	if !ok && method == fasthttp.MethodHead {
		rt, ok = methods[fasthttp.MethodGet]
	}
	if !ok {
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		var stats *metrics.Route
		for _, rt := range methods {
			stats = rt.stats // every method of a path has its metrics
			break
		}
		ctx.Response.Header.Set(fasthttp.HeaderAllow, strings.Join(allow, ", "))
		WriteError(ctx, Errorf(fasthttp.StatusMethodNotAllowed, CodeMethodNotAllow,
			"%s %s: method not allowed; allowed: %s", Quote(string(ctx.Method())), Quote(string(ctx.Path())),
			strings.Join(allow, ", ")))
		return route{stats: stats}, false
	}
	return rt, true
}

// Serve is the fasthttp.RequestHandler of the router.
func (r *Router) Serve(ctx *fasthttp.RequestCtx) { r.serve(ctx) }

// serve serves ctx and returns the metrics of its route (nil: unmatched).
func (r *Router) serve(ctx *fasthttp.RequestCtx) (stats *metrics.Route) {
	defer func() { r.panicked(ctx, recover()) }()
	rt, ok := r.resolve(ctx)
	stats = rt.stats
	if ok {
		rt.h(ctx)
	}
	return stats
}

// Early is the router's answer from the headers: the route's [Early], or a
// 404 or 405 written at once. It reports whether the body is wanted.
func (r *Router) Early(ctx *fasthttp.RequestCtx) (want bool) {
	want, _ = r.early(ctx)
	return want
}

// early is Early, with the metrics of the request's route (nil: unmatched).
func (r *Router) early(ctx *fasthttp.RequestCtx) (want bool, stats *metrics.Route) {
	defer func() {
		if r.panicked(ctx, recover()) {
			want = false
		}
	}()
	rt, ok := r.resolve(ctx)
	if !ok {
		return false, rt.stats
	}
	return rt.early == nil || rt.early(ctx), rt.stats
}

// panicked turns a handler's panic, v as recovered, into a JSON 500 with
// its stack in the log; it reports whether there was one.
func (r *Router) panicked(ctx *fasthttp.RequestCtx, v any) bool {
	if v == nil {
		return false
	}
	r.log.Error("handler panic", "method", string(ctx.Method()), "path", string(ctx.Path()),
		"panic", v, "stack", string(debug.Stack()))
	ctx.Response.Reset()
	WriteError(ctx, Errorf(fasthttp.StatusInternalServerError, CodeInternal, "internal error"))
	return true
}
