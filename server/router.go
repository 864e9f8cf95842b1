package server

import (
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/valyala/fasthttp"
)

// Router dispatches on exact path, then method. An unknown path is a JSON
// 404, a known path with another method a JSON 405 with an Allow header, and
// a panic in a handler a JSON 500 with its stack in the log: a bad request
// never takes the worker down.
type Router struct {
	log      *slog.Logger
	routes   map[string]map[string]fasthttp.RequestHandler
	prefixes []string // HandlePrefix paths, longest first
}

// NewRouter returns an empty router that logs handler panics to log.
func NewRouter(log *slog.Logger) *Router {
	return &Router{log: log, routes: map[string]map[string]fasthttp.RequestHandler{}}
}

// Handle registers h for method and path. HEAD is served by GET handlers.
func (r *Router) Handle(method, path string, h fasthttp.RequestHandler) {
	if r.routes[path] == nil {
		r.routes[path] = map[string]fasthttp.RequestHandler{}
	}
	r.routes[path][method] = h
}

// HandlePrefix registers h for method and every path under prefix (which
// ends in "/"), such as "/v1/hash/" for /v1/hash/{algo}. [PathParam] returns
// the rest of the path. An exact route wins over a prefix.
func (r *Router) HandlePrefix(method, prefix string, h fasthttp.RequestHandler) {
	if !strings.HasSuffix(prefix, "/") {
		panic("server: HandlePrefix: prefix must end in /: " + prefix)
	}
	if r.routes[prefix] == nil {
		r.prefixes = append(r.prefixes, prefix)
		slices.SortFunc(r.prefixes, func(a, b string) int { return len(b) - len(a) })
	}
	r.Handle(method, prefix, h)
}

// PathParam returns the part of the request path after prefix.
func PathParam(ctx *fasthttp.RequestCtx, prefix string) string {
	return strings.TrimPrefix(string(ctx.Path()), prefix)
}

func (r *Router) lookup(path []byte) map[string]fasthttp.RequestHandler {
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

// Serve is the fasthttp.RequestHandler of the router.
func (r *Router) Serve(ctx *fasthttp.RequestCtx) {
	defer func() {
		if v := recover(); v != nil {
			r.log.Error("handler panic", "method", string(ctx.Method()), "path", string(ctx.Path()),
				"panic", v, "stack", string(debug.Stack()))
			ctx.Response.Reset()
			WriteError(ctx, Errorf(fasthttp.StatusInternalServerError, CodeInternal, "internal error"))
		}
	}()
	methods := r.lookup(ctx.Path())
	if methods == nil {
		WriteError(ctx, Errorf(fasthttp.StatusNotFound, CodeNotFound, "no route for %s %s", ctx.Method(), ctx.Path()))
		return
	}
	method := string(ctx.Method())
	h := methods[method]
	if h == nil && method == fasthttp.MethodHead {
		h = methods[fasthttp.MethodGet]
	}
	if h == nil {
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		slices.Sort(allow)
		ctx.Response.Header.Set(fasthttp.HeaderAllow, strings.Join(allow, ", "))
		WriteError(ctx, Errorf(fasthttp.StatusMethodNotAllowed, CodeMethodNotAllow,
			"%s %s: method not allowed; allowed: %s", ctx.Method(), ctx.Path(), strings.Join(allow, ", ")))
		return
	}
	h(ctx)
}
