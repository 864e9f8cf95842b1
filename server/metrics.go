package server

import (
	"runtime"

	"github.com/hybrid-server/hybrid/internal/metrics"
)

// AppendMetrics appends the server's metrics to snap: the requests by
// route, method, status and mode, their latency histograms, and the
// worker's in-flight figures, connections and memory.
func (s *Server) AppendMetrics(snap *metrics.Snapshot) {
	s.metrics.AppendTo(snap)
	snap.Add("hybrid_http_requests_in_flight", float64(s.inFlight.Load()))
	snap.Add("hybrid_http_in_flight_body_bytes", float64(s.conns.bodies.used.Load()))
	snap.Add("hybrid_http_bodies_refused_total", float64(s.conns.bodies.refused.Load()))
	snap.Add("hybrid_http_connections_refused_total", float64(s.conns.refused.Load()))
	snap.Add("hybrid_worker_open_connections", float64(s.conns.open()))
	snap.Add("hybrid_worker_resident_memory_bytes", float64(s.rss.get()))
	snap.Add("hybrid_worker_goroutines", float64(runtime.NumGoroutine()))
}
