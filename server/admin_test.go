//go:build linux

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// fakeCluster records the admin's calls; err, when set, is every call's answer.
type fakeCluster struct {
	mu       sync.Mutex
	reloads  int
	upgrades int
	scaled   []int
	pools    []int
	err      error
}

func (f *fakeCluster) Snapshot() procpool.Snapshot {
	return procpool.Snapshot{PrimaryPID: 1, Circuit: "closed", WorkersWanted: 1, WorkersReady: 1, WorkersMax: 16}
}

func (f *fakeCluster) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.reloads++
	}
	return f.err
}

func (f *fakeCluster) Upgrade(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.upgrades++
	}
	return f.err
}

func (f *fakeCluster) Scale(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.scaled = append(f.scaled, n)
	}
	return f.err
}

func (f *fakeCluster) SetPoolSize(n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.pools = append(f.pools, n)
	}
	return f.err
}

func (f *fakeCluster) calls() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprintf("reloads %d, upgrades %d, scaled %v, pools %v", f.reloads, f.upgrades, f.scaled, f.pools)
}

// startAdmin serves an Admin of a fake cluster on addr (ListenAdmin's
// syntax) and returns the cluster and the listener's address.
func startAdmin(t *testing.T, addr string, opts ...AdminOption) (*fakeCluster, net.Addr) {
	t.Helper()
	ln, err := ListenAdmin(addr)
	if err != nil {
		t.Fatal(err)
	}
	fc := &fakeCluster{}
	a := NewAdmin(fc, slog.New(slog.NewTextHandler(io.Discard, nil)), opts...)
	done := make(chan error, 1)
	go func() { done <- a.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		a.Shutdown(ctx)
		<-done
	})
	return fc, ln.Addr()
}

type adminReply struct {
	status int
	header http.Header
	code   string // the JSON error's code
	msg    string // and its message
}

// call sends method path with body and the given headers ("Host" sets
// the Host) to the admin at addr.
func call(t *testing.T, client *http.Client, addr, method, path, body string, headers ...string) adminReply {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &e)
	return adminReply{status: resp.StatusCode, header: resp.Header, code: e.Error.Code, msg: e.Error.Message}
}

// A page in a browser can POST a form to the loopback admin: without the
// admin header (which a form cannot send, and a cross-origin script cannot
// without a preflight the admin never grants) it is refused, and nothing
// happens.
func TestAdminRefusesBrowserRequests(t *testing.T) {
	fc, addr := startAdmin(t, "127.0.0.1:0")
	a := addr.String()
	form := []string{"Content-Type", "application/x-www-form-urlencoded", "Origin", "http://evil.example"}
	for _, tc := range []struct {
		name    string
		headers []string
	}{
		{"form from another site", form},
		{"text/plain fetch", []string{"Content-Type", "text/plain", "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"}},
		{"no header at all", nil},
		{"the header, from a browser", []string{AdminHeader, "1", "Origin", "http://evil.example"}},
		{"the header, same origin after DNS rebinding", []string{AdminHeader, "1", "Host", "evil.example:8081"}},
		{"the header, wrong value", []string{AdminHeader, "yes"}},
	} {
		for _, path := range []string{"/reload", "/upgrade", "/scale", "/pool"} {
			if r := call(t, http.DefaultClient, a, "POST", path, `{"workers":2}`, tc.headers...); r.status != 403 || r.code != "forbidden" {
				t.Errorf("%s: POST %s = %d %q; want 403 forbidden", tc.name, path, r.status, r.code)
			}
		}
	}
	if got := fc.calls(); got != "reloads 0, upgrades 0, scaled [], pools []" {
		t.Errorf("after refused calls the cluster saw %s; want nothing", got)
	}
	// A preflight gets no CORS grant, and neither does any answer.
	r := call(t, http.DefaultClient, a, "OPTIONS", "/reload", "", "Origin", "http://evil.example",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", AdminHeader)
	for _, rr := range []adminReply{r, call(t, http.DefaultClient, a, "GET", "/cluster", "", "Origin", "http://evil.example")} {
		for k := range rr.header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Errorf("admin answered with %s: %v; want no CORS header", k, rr.header[k])
			}
		}
	}
	if r := call(t, http.DefaultClient, a, "POST", "/reload", "", AdminHeader, "1"); r.status != 202 {
		t.Errorf("POST /reload with %s: 1 = %d; want 202", AdminHeader, r.status)
	}
	for _, host := range []string{"", "localhost:8081", "127.0.0.1", "[::1]:8081"} {
		if r := call(t, http.DefaultClient, a, "GET", "/cluster", "", "Host", host); host != "" && r.status != 200 {
			t.Errorf("GET /cluster with Host %q = %d; want 200", host, r.status)
		}
	}
	if got := fc.calls(); got != "reloads 1, upgrades 0, scaled [], pools []" {
		t.Errorf("cluster saw %s; want one reload", got)
	}
}

func TestAdminToken(t *testing.T) {
	fc, addr := startAdmin(t, "127.0.0.1:0", WithToken("s3cret"))
	a := addr.String()
	for _, auth := range []string{"", "Bearer", "Bearer wrong", "Bearer s3cret2", "Bearers3cret", "Basic s3cret", "Basic czNjcmV0"} {
		for _, rt := range []struct{ method, path string }{{"GET", "/cluster"}, {"POST", "/reload"}} {
			r := call(t, http.DefaultClient, a, rt.method, rt.path, "", "Authorization", auth, AdminHeader, "1")
			if r.status != 401 || r.code != "unauthorized" || r.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s with Authorization %q = %d %q; want 401 unauthorized with WWW-Authenticate", rt.method, rt.path, auth, r.status, r.code)
			}
		}
	}
	if r := call(t, http.DefaultClient, a, "GET", "/health", ""); r.status != 200 {
		t.Errorf("GET /health without the token = %d; want 200: probes need no token", r.status)
	}
	// The token alone is enough: no browser sends a bearer token on its own.
	if r := call(t, http.DefaultClient, a, "POST", "/reload", "", "Authorization", "Bearer s3cret", "Host", "admin.example:8081"); r.status != 202 {
		t.Errorf("POST /reload with the token = %d; want 202", r.status)
	}
	if r := call(t, http.DefaultClient, a, "GET", "/cluster", "", "Authorization", "Bearer s3cret"); r.status != 200 {
		t.Errorf("GET /cluster with the token = %d; want 200", r.status)
	}
	// The scheme is case-insensitive (RFC 9110), and spaces may follow it.
	for _, auth := range []string{"bearer s3cret", "BEARER s3cret", "Bearer   s3cret"} {
		if r := call(t, http.DefaultClient, a, "GET", "/cluster", "", "Authorization", auth); r.status != 200 {
			t.Errorf("GET /cluster with Authorization %q = %d; want 200", auth, r.status)
		}
	}
	if got := fc.calls(); got != "reloads 1, upgrades 0, scaled [], pools []" {
		t.Errorf("cluster saw %s; want one reload", got)
	}
}

// Each procpool error has its status and code; a busy one says why.
func TestAdminClusterErrors(t *testing.T) {
	fc, addr := startAdmin(t, "127.0.0.1:0")
	for _, tc := range []struct {
		err    error
		path   string
		status int
		code   string
		msg    string // "": not checked
	}{
		{fmt.Errorf("reload: %w", procpool.ErrBusy), "/reload", 409, "busy", "reload"},
		{fmt.Errorf("upgrade refused: the previous primary (pid 7) still drains its workers: %w", procpool.ErrBusy), "/upgrade", 409, "busy",
			"upgrade refused: the previous primary (pid 7) still drains its workers"},
		{procpool.ErrBusy, "/upgrade", 409, "busy", "a reload or upgrade is already running"},
		{fmt.Errorf("%w: new primary not ready within 10s", procpool.ErrRolledBack), "/upgrade", 502, "rolled_back", ""},
		{fmt.Errorf("%w: PID 1", procpool.ErrUnsupported), "/upgrade", 501, "unsupported", ""},
		{fmt.Errorf("%w: 2000 workers, want at most 64", procpool.ErrInvalid), "/scale", 400, "bad_request", ""},
		{procpool.ErrStopped, "/pool", 503, "shutting_down", ""},
		{Errorf(409, "invalid_config", "config: x:1: bad"), "/reload", 409, "invalid_config", ""},
		{io.ErrUnexpectedEOF, "/reload", 500, "internal", ""},
	} {
		fc.mu.Lock()
		fc.err = tc.err
		fc.mu.Unlock()
		body := map[string]string{"/scale": `{"workers":3}`, "/pool": `{"size":3}`}[tc.path]
		if r := call(t, http.DefaultClient, addr.String(), "POST", tc.path, body, AdminHeader, "1"); r.status != tc.status || r.code != tc.code ||
			tc.msg != "" && r.msg != tc.msg {
			t.Errorf("POST %s when the cluster says %q = %d %q %q; want %d %q %q", tc.path, tc.err, r.status, r.code, r.msg, tc.status, tc.code, tc.msg)
		}
	}
	fc.mu.Lock()
	fc.err = nil
	fc.mu.Unlock()
	if r := call(t, http.DefaultClient, addr.String(), "POST", "/upgrade", "", AdminHeader, "1"); r.status != 200 {
		t.Errorf("POST /upgrade = %d; want 200 once done", r.status)
	}
}

// /scale and /pool take exactly {"workers":N} and {"size":N}.
func TestAdminCountBodies(t *testing.T) {
	fc, addr := startAdmin(t, "127.0.0.1:0")
	post := func(path, body string) int {
		return call(t, http.DefaultClient, addr.String(), "POST", path, body, AdminHeader, "1").status
	}
	if s := post("/scale", `{"workers": 3}`+"\n"); s != 202 {
		t.Errorf(`POST /scale {"workers": 3} = %d; want 202`, s)
	}
	if s := post("/scale", `{"workers":16}`); s != 202 {
		t.Errorf(`POST /scale {"workers":16} = %d; want 202: workers_max is 16`, s)
	}
	if s := post("/pool", `{"size":4096}`); s != 202 {
		t.Errorf(`POST /pool {"size":4096} = %d; want 202`, s)
	}
	for _, body := range []string{`{"size":0}`, `{"size":4097}`, `{"size":-1}`} {
		if s := post("/pool", body); s != 400 {
			t.Errorf("POST /pool %s = %d; want 400: the size is 1 to procpool.MaxPoolSize", body, s)
		}
	}
	for _, body := range []string{
		``, `{}`, `[]`, `3`, `{"workers":0}`, `{"workers":-1}`, `{"workers":17}`, `{"workers":4097}`, `{"workers":1.5}`, `{"workers":1e1}`,
		`{"workers":"3"}`, `{"Workers":3}`, `{"workers":3,"workers":4}`, `{"workers":3,"size":1}`,
		`{"workers":3}{}`, `{"workers":3} x`, `{"workers":3`, `{"workers":99999999999999999999}`,
		`{"workers":` + strings.Repeat(" ", 2000) + `3}`,
	} {
		if s := post("/scale", body); s != 400 && s != 413 {
			t.Errorf("POST /scale %.40q = %d; want 400 (or 413 when too large)", body, s)
		}
	}
	if s := post("/pool", `{"workers":3}`); s != 400 {
		t.Errorf(`POST /pool {"workers":3} = %d; want 400`, s)
	}
	if got := fc.calls(); got != "reloads 0, upgrades 0, scaled [3 16], pools [4096]" {
		t.Errorf("cluster saw %s; want scaled [3 16], pools [4096]", got)
	}
}

func TestCheckAdminAddr(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:8081", "", true},
		{"127.0.0.2:8081", "", true},
		{"[::1]:8081", "", true},
		{"localhost:8081", "", true},
		{"off", "", true},
		{"unix:/run/hybrid/admin.sock", "", true},
		{":8081", "", false},
		{"0.0.0.0:8081", "", false},
		{"[::]:8081", "", false},
		{"10.0.0.5:8081", "", false},
		{"admin.example:8081", "", false},
		{"127.0.0.1", "", false}, // no port
		{"0.0.0.0:8081", "s3cret", true},
		{"127.0.0.1:8081", "s3 cret", true},
		// A token HTTP cannot carry as it is can never match: refused.
		{"127.0.0.1:8081", " tok en ", false},
		{"unix:/run/hybrid/admin.sock", "tok\t", false},
		{"0.0.0.0:8081", "tok\nen", false},
		{"off", "tok\x7f", false},
	} {
		err := CheckAdminAddr(tc.addr, tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("CheckAdminAddr(%q, %q) = %v; want ok %v", tc.addr, tc.token, err, tc.ok)
		}
		if err != nil && tc.token != "" && strings.Contains(err.Error(), tc.token) {
			t.Errorf("CheckAdminAddr(%q, %q) = %v: it names the token, a secret", tc.addr, tc.token, err)
		}
	}
}

// The unix socket is 0600 from its creation, serves the admin (no Host
// check: no browser reaches a unix socket; the admin header still needed),
// replaces a stale socket file, refuses a live one, and is removed on close.
func TestListenAdminUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // the file stays, as after a SIGKILL
	fc, _ := startAdmin(t, "unix:"+path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("admin socket mode = %v; want 0600", mode)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	if r := call(t, client, "hybrid", "GET", "/cluster", ""); r.status != 200 {
		t.Errorf("GET /cluster over the socket = %d; want 200", r.status)
	}
	if r := call(t, client, "hybrid", "POST", "/reload", ""); r.status != 403 {
		t.Errorf("POST /reload over the socket without %s = %d; want 403", AdminHeader, r.status)
	}
	if r := call(t, client, "hybrid", "POST", "/reload", "", AdminHeader, "1"); r.status != 202 || fc.calls() != "reloads 1, upgrades 0, scaled [], pools []" {
		t.Errorf("POST /reload over the socket = %d, cluster %s; want 202, one reload", r.status, fc.calls())
	}
	if _, err := ListenAdmin("unix:" + path); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("ListenAdmin on a live socket = %v; want it refused", err)
	}

	ln, err := ListenAdmin("unix:" + filepath.Join(t.TempDir(), "b.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Stat(ln.Addr().String()); !os.IsNotExist(err) {
		t.Errorf("socket file after Close: %v; want it removed", err)
	}
}
