package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// serveInMemory runs srv on an in-memory listener and returns a client for it.
func serveInMemory(t *testing.T, srv *Server) *fasthttp.Client {
	t.Helper()
	srv.grace = 50 * time.Millisecond // the client's idle keep-alive connections end the test's drain
	ln := fasthttputil.NewInmemoryListener()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
}

func do(t *testing.T, c *fasthttp.Client, method, path, body string) (int, []byte, *fasthttp.Response) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), &fasthttp.Response{}
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://worker" + path)
	req.SetBodyString(body)
	if err := c.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode(), resp.Body(), resp
}

func errorCode(t *testing.T, body []byte) string {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("body %q is not the error shape: %v", body, err)
	}
	return e.Error.Code
}

func TestRouterErrorsAndPanics(t *testing.T) {
	srv := New(Config{MaxBody: 16}, slog.New(slog.DiscardHandler), 7)
	srv.Router.Handle(fasthttp.MethodPost, "/boom", func(*fasthttp.RequestCtx) { panic("boom") })
	c := serveInMemory(t, srv)
	for _, tc := range []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"GET", "/missing", "", 404, CodeNotFound},
		{"DELETE", "/health", "", 405, CodeMethodNotAllow},
		{"POST", "/boom", "", 500, CodeInternal},
		{"POST", "/boom", strings.Repeat("x", 17), 413, CodeBodyTooLarge},
	} {
		status, body, resp := do(t, c, tc.method, tc.path, tc.body)
		if status != tc.status || errorCode(t, body) != tc.code {
			t.Errorf("%s %s = %d %s; want %d %s", tc.method, tc.path, status, body, tc.status, tc.code)
		}
		if tc.status == 405 && string(resp.Header.Peek("Allow")) != "GET" {
			t.Errorf("405 Allow = %q; want GET", resp.Header.Peek("Allow"))
		}
	}
	// A method is named quoted and cut, as any client value (MaxMessage).
	long := strings.Repeat("M", 200)
	for _, path := range []string{"/health", "/missing"} {
		_, body, _ := do(t, c, long, path, "")
		var e errorBody
		json.Unmarshal(body, &e)
		if want := `"` + strings.Repeat("M", 40) + `…"`; !strings.HasPrefix(e.Error.Message, want) && !strings.Contains(e.Error.Message, " "+want) {
			t.Errorf("a 200-byte method on %s: message %q; want it quoted and cut: %s", path, e.Error.Message, want)
		}
	}
	// The panic did not stop the server.
	if status, _, _ := do(t, c, "GET", "/health", ""); status != 200 {
		t.Errorf("GET /health after a panic = %d; want 200", status)
	}
	if status, _, _ := do(t, c, "HEAD", "/health", ""); status != 200 {
		t.Errorf("HEAD /health = %d; want 200 (served by GET)", status)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 3)
	c := serveInMemory(t, srv)
	status, body, _ := do(t, c, "GET", "/health", "")
	var h struct {
		Status     string
		PID        int
		Worker     int
		RSS        uint64 `json:"rss_bytes"`
		Goroutines int
	}
	if err := json.Unmarshal(body, &h); err != nil || status != 200 {
		t.Fatalf("GET /health = %d %q: %v", status, body, err)
	}
	if h.Status != "ok" || h.Worker != 3 || h.PID == 0 || h.RSS == 0 || h.Goroutines == 0 {
		t.Errorf("health = %+v; want ok, worker 3, a pid, rss and goroutines", h)
	}
	if status, _, _ := do(t, c, "GET", "/ready", ""); status != 200 {
		t.Errorf("GET /ready = %d; want 200", status)
	}
	srv.draining.Store(true) // as Shutdown does, without closing the listener
	if status, body, _ := do(t, c, "GET", "/ready", ""); status != 503 || errorCode(t, body) != CodeDraining {
		t.Errorf("GET /ready while draining = %d %s; want 503 draining", status, body)
	}
}

func TestShutdownWaitsForInFlight(t *testing.T) {
	srv := New(Config{}, slog.New(slog.DiscardHandler), 1)
	started := make(chan struct{})
	srv.Router.Handle(fasthttp.MethodGet, "/slow", func(ctx *fasthttp.RequestCtx) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		ctx.SetBodyString("done")
	})
	ln := fasthttputil.NewInmemoryListener()
	go srv.Serve(ln)
	c := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	result := make(chan string, 1)
	go func() {
		_, body, _ := do(t, c, "GET", "/slow", "")
		result <- string(body)
	}()
	<-started
	if st := srv.Stats(); st.InFlight != 1 {
		t.Errorf("in flight = %d; want 1", st.InFlight)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := <-result; got != "done" {
		t.Errorf("in-flight request across Shutdown = %q; want done", got)
	}
	if st := srv.Stats(); st.Requests != 1 || st.InFlight != 0 {
		t.Errorf("after shutdown: %+v; want 1 request, 0 in flight", st)
	}
}
