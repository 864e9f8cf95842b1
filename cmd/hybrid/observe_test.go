package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// TestAccessLog: with --access-log <file>, every request answered is one
// JSON line with its fields; X-Request-ID is honoured when safe, else
// generated, and echoed either way; a hostile path stays inside its line.
func TestAccessLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	c := startCluster(t, nil, 2, "--workers", "2", "--access-log", path)
	client := keptAlive()
	base := "http://" + c.addr

	sent := map[string]int{} // body bytes the client read, by the request id echoed
	do := func(method, url, id string, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if id != "" {
			req.Header.Set("X-Request-ID", id)
		}
		req.Header.Set("Accept-Encoding", "identity") // the body as sent is the body read
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		sent[resp.Header.Get("X-Request-ID")] = int(n)
		return resp
	}
	r1 := do("POST", base+"/v1/hash/sha256", "trace-1.a_B", "x")
	if got := r1.Header.Get("X-Request-ID"); got != "trace-1.a_B" {
		t.Errorf("X-Request-ID echoed = %q; want the client's trace-1.a_B", got)
	}
	bad := strings.Repeat("z", 65)
	r2 := do("GET", base+"/nope", bad, "")
	gen := r2.Header.Get("X-Request-ID")
	if gen == "" || gen == bad || len(gen) != 32 {
		t.Errorf("X-Request-ID for a 65-byte id = %q; want a generated one of 32 hex digits", gen)
	}
	r3 := do("GET", base+"/health", "evil\"id", "")
	if got := r3.Header.Get("X-Request-ID"); got == "" || strings.Contains(got, "evil") {
		t.Errorf("X-Request-ID for an unsafe id = %q; want a generated one", got)
	}

	// A hostile raw path: quotes, backslashes, braces, invalid UTF-8,
	// percent-encoded newlines; as long as the server's read buffer takes
	// (a longer one, or control bytes, fasthttp refuses before any
	// handler: no line; server's TestAccessLogLine covers control bytes).
	hostile := "/h" + strings.Repeat("\"\\}{\xff%0A%0D<", 300)
	if s := rawStatus(t, c.addr, "GET "+hostile+" HTTP/1.1\r\nHost: x\r\nX-Request-ID: raw-1\r\n\r\n"); s != 400 {
		t.Errorf("the hostile path: status %d; want 400 (invalid UTF-8 in the path)", s)
	}
	if s := rawStatus(t, c.addr, "GET /"+strings.Repeat("a\"\x01", 3500)+" HTTP/1.1\r\nHost: x\r\n\r\n"); s < 400 {
		t.Errorf("a 10 KB request line: status %d; want a refusal", s)
	}

	var lines []map[string]any
	c.waitFor(10*time.Second, "4 access-log lines", func() bool {
		lines = readAccessLog(t, path)
		return len(lines) >= 4
	})
	byID := map[string]map[string]any{}
	for _, l := range lines {
		for _, k := range []string{"time", "method", "path", "status", "bytes", "duration", "mode", "worker", "remote", "request_id"} {
			if _, ok := l[k]; !ok {
				t.Errorf("line %v: no %q", l, k)
			}
		}
		id, _ := l["request_id"].(string)
		byID[id] = l
	}
	want := []struct {
		id, method, path, mode string
		status                 float64
	}{
		{"trace-1.a_B", "POST", "/v1/hash/sha256", "pool", 200},
		{gen, "GET", "/nope", "", 404},
		{"raw-1", "GET", "", "", 400},
	}
	for _, w := range want {
		l := byID[w.id]
		if l == nil {
			t.Errorf("no line with request_id %q in %v", w.id, lines)
			continue
		}
		if l["method"] != w.method || (w.path != "" && l["path"] != w.path) || l["mode"] != w.mode || l["status"] != w.status {
			t.Errorf("line %v; want %s %s mode %q status %v", l, w.method, w.path, w.mode, w.status)
		}
		if d, _ := l["duration"].(float64); d < 0 || d > 10 {
			t.Errorf("line %v: duration %v", l, l["duration"])
		}
		if wk, _ := l["worker"].(float64); wk < 1 || wk > 2 {
			t.Errorf("line %v: worker %v", l, l["worker"])
		}
		if r, _ := l["remote"].(string); !strings.HasPrefix(r, "127.0.0.1:") {
			t.Errorf("line %v: remote %v", l, l["remote"])
		}
	}
	if l := byID["raw-1"]; l != nil {
		p, _ := l["path"].(string)
		if !strings.HasPrefix(p, "/h\"\\}{\ufffd%0A%0D<") || len([]rune(p)) > 512 {
			t.Errorf("hostile path logged as %q…; want the raw path, escaped, at most 512 bytes of it", p[:min(len(p), 40)])
		}
	}
	for id, n := range sent {
		if l := byID[id]; l == nil || l["bytes"] != float64(n) || n == 0 {
			t.Errorf("request %q: the client read %d body bytes; its line %v", id, n, l)
		}
	}
}

// TestAccessLogStderr: --access-log stderr writes the same lines through
// the primary's copy of the worker's stderr.
func TestAccessLogStderr(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--access-log", "stderr")
	req, _ := http.NewRequest("POST", "http://"+c.addr+"/v1/hash/sha256", strings.NewReader("x"))
	req.Header.Set("X-Request-ID", "stderr-1")
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := freshClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var line map[string]any
	c.waitFor(10*time.Second, "the access line on stderr", func() bool {
		for _, l := range c.logs.find("access") {
			if l["request_id"] == "stderr-1" {
				line = l
				return true
			}
		}
		return false
	})
	if line["method"] != "POST" || line["path"] != "/v1/hash/sha256" || line["status"] != 200.0 || line["mode"] != "pool" ||
		line["bytes"] != float64(n) || line["worker"] != 1.0 {
		t.Errorf("the access line %v; want POST /v1/hash/sha256, 200, pool, %d bytes, worker 1", line, n)
	}
}

// TestRequestIDWithoutAccessLog: X-Request-ID is echoed with the access
// log off too: the client's when safe, else one generated.
func TestRequestIDWithoutAccessLog(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1")
	client := keptAlive()
	id := func(sent string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+c.addr+"/health", nil)
		if sent != "" {
			req.Header.Set("X-Request-ID", sent)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.Header.Get("X-Request-ID")
	}
	if got := id("off-1"); got != "off-1" {
		t.Errorf("X-Request-ID off-1 echoed as %q", got)
	}
	a, b := id(""), id("bad id")
	hex32 := regexp.MustCompile(`^[0-9a-f]{32}$`)
	if !hex32.MatchString(a) || !hex32.MatchString(b) || a == b {
		t.Errorf("generated ids %q and %q; want two distinct ids of 32 hex digits", a, b)
	}
	if lines := c.logs.find("access"); len(lines) != 0 {
		t.Errorf("access lines with the log off: %v", lines)
	}
}

// readAccessLog reads path's lines, each of which must be a JSON object.
func readAccessLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access-log line %q: %v", sc.Text(), err)
		}
		if len(sc.Bytes()) > 4096 {
			t.Errorf("access-log line of %d bytes; want at most 4096 (one atomic append)", len(sc.Bytes()))
		}
		out = append(out, m)
	}
	return out
}

// rawStatus sends req as it is on a new connection and returns the status.
func rawStatus(t *testing.T, addr, req string) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("response to %q…: %v", req[:min(len(req), 40)], err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestPprof: with --pprof the admin endpoint proxies a worker's
// net/http/pprof; without it, and for a worker that is not there, 404;
// ?seconds= beyond 60 is 400.
func TestPprof(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--pprof")
	client := freshClient()
	admin := "http://" + c.admin + "/workers/"
	get := func(url string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Hybrid-Admin", "1") // a profile costs the worker: as a POST, not from a page
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	var status int
	var dump []byte
	// The worker's first heartbeat carries its pprof address.
	c.waitFor(10*time.Second, "the goroutine dump", func() bool {
		status, dump = get(admin + "1/debug/pprof/goroutine?debug=1")
		return status == 200
	})
	if !bytes.Contains(dump, []byte("valyala/fasthttp")) && !bytes.Contains(dump, []byte("hybrid")) {
		t.Errorf("goroutine dump holds no fasthttp or hybrid frame:\n%.2000s", dump)
	}
	status, heap := get(admin + "1/debug/pprof/heap")
	if status != 200 || len(heap) < 2 || heap[0] != 0x1f || heap[1] != 0x8b {
		t.Errorf("heap profile: %d, %d bytes %q…; want 200 and gzip", status, len(heap), heap[:min(len(heap), 8)])
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"9/debug/pprof/goroutine", 404},
		{"1/debug/pprof/nope", 404},
		{"1/debug/pprof/profile?seconds=1000", 400},
		{"1/debug/pprof/profile?seconds=x", 400},
	} {
		if s, b := get(admin + tc.path); s != tc.want {
			t.Errorf("GET /workers/%s = %d %s; want %d", tc.path, s, b, tc.want)
		}
	}
	if s, b := get(admin + "1/debug/pprof/profile?seconds=1"); s != 200 || len(b) == 0 {
		t.Errorf("a 1 s CPU profile: %d, %d bytes", s, len(b))
	}
	// The admin's Host check applies, and a page on another origin (no
	// admin header, or an Origin) cannot start a profile.
	for _, tc := range []struct {
		what         string
		host, origin string
		header       bool
	}{
		{"a foreign Host", "evil.example", "", true},
		{"no admin header (an <img> or a no-cors fetch)", "", "", false},
		{"an Origin", "", "https://evil.example", true},
	} {
		req, _ := http.NewRequest("GET", admin+"1/debug/pprof/goroutine", nil)
		if tc.host != "" {
			req.Host = tc.host
		}
		if tc.origin != "" {
			req.Header.Set("Origin", tc.origin)
		}
		if tc.header {
			req.Header.Set("X-Hybrid-Admin", "1")
		}
		if resp, err := client.Do(req); err != nil || resp.StatusCode != 403 {
			t.Errorf("GET with %s: %v, %v; want 403", tc.what, resp, err)
		} else {
			resp.Body.Close()
		}
	}
	// Idle connections to a worker's own pprof port are closed, and at
	// most a few are held: a local user cannot take the worker's
	// descriptors (the review opened 20,000 and stopped its listener).
	var pprofAddr string
	for _, m := range c.logs.find("pprof listening on loopback") {
		pprofAddr, _ = m["pprof_addr"].(string)
	}
	if pprofAddr == "" {
		t.Fatal("no pprof address in the log")
	}
	workerPID := c.snapshot().Workers[0].PID
	before := fdCount(workerPID)
	var held []net.Conn
	for range 3 * pprofConns {
		conn, err := net.DialTimeout("tcp", pprofAddr, time.Second)
		if err != nil {
			break
		}
		held = append(held, conn)
	}
	time.Sleep(300 * time.Millisecond)
	during := fdCount(workerPID)
	for _, conn := range held {
		conn.Close()
	}
	if during-before > pprofConns+2 {
		t.Errorf("the worker went from %d to %d descriptors with %d connections open to its pprof port; want at most %d of them accepted",
			before, during, len(held), pprofConns)
	}

	off := startCluster(t, nil, 1, "--workers", "1", "--heartbeat-interval", "100ms")
	// A 404 must mean off, not "no heartbeat yet" (the first carries the
	// pprof address): wait for the worker's first heartbeat.
	off.waitFor(10*time.Second, "the worker's first heartbeat", func() bool {
		s := off.snapshot()
		return len(s.Workers) == 1 && s.Workers[0].State == procpool.StateReady && s.Workers[0].RSS > 0
	})
	if s, b := get(fmt.Sprintf("http://%s/workers/1/debug/pprof/goroutine", off.admin)); s != 404 {
		t.Errorf("without --pprof: %d %s; want 404", s, b)
	}
}
