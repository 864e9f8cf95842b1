//go:build linux

package server

import (
	"context"
	"log/slog"
	"net"

	"github.com/hybrid-server/hybrid/procpool"
	"github.com/valyala/fasthttp"
)

// Cluster is what the admin endpoint needs of the supervisor.
type Cluster interface {
	Snapshot() procpool.Snapshot
	Reload()
}

// Admin is the primary's own small HTTP surface: GET /cluster, GET /health
// and POST /reload. It does no request work.
type Admin struct {
	cluster Cluster
	log     *slog.Logger
	fs      *fasthttp.Server
}

// NewAdmin returns the admin server of cluster.
func NewAdmin(cluster Cluster, log *slog.Logger) *Admin {
	a := &Admin{cluster: cluster, log: log}
	r := NewRouter(log)
	r.Handle(fasthttp.MethodGet, "/cluster", a.snapshot)
	r.Handle(fasthttp.MethodGet, "/health", a.health)
	r.Handle(fasthttp.MethodPost, "/reload", a.reload)
	cfg := DefaultConfig()
	cfg.MaxBody = 64 << 10
	a.fs = newFastServer(cfg, r.Serve, log)
	return a
}

// Serve serves on ln until Shutdown. Blocking.
func (a *Admin) Serve(ln net.Listener) error { return a.fs.Serve(ln) }

// Shutdown stops the admin server.
func (a *Admin) Shutdown(ctx context.Context) error { return a.fs.ShutdownWithContext(ctx) }

func (a *Admin) snapshot(ctx *fasthttp.RequestCtx) {
	WriteJSON(ctx, fasthttp.StatusOK, a.cluster.Snapshot())
}

func (a *Admin) health(ctx *fasthttp.RequestCtx) {
	snap := a.cluster.Snapshot()
	body := map[string]any{
		"status":         "ok",
		"primary_pid":    snap.PrimaryPID,
		"circuit":        snap.Circuit,
		"workers_ready":  snap.WorkersReady,
		"workers_wanted": snap.WorkersWanted,
	}
	ok, reason := snap.Health()
	if !ok {
		body["status"], body["reason"] = "degraded", reason
		WriteJSON(ctx, fasthttp.StatusServiceUnavailable, body)
		return
	}
	WriteJSON(ctx, fasthttp.StatusOK, body)
}

func (a *Admin) reload(ctx *fasthttp.RequestCtx) {
	a.log.Info("reload requested over the admin endpoint", "remote", ctx.RemoteAddr().String())
	a.cluster.Reload()
	WriteJSON(ctx, fasthttp.StatusAccepted, map[string]string{"status": "reloading"})
}
