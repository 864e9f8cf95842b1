package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/redistest"
)

// outcome is one response of fire.
type outcome struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// pooledClient is a client that keeps up to conns connections open, as a
// load balancer's pool does.
func pooledClient(conns int) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}}
}

// fire sends n requests of method to url with body and headers over conns
// kept-alive connections at once, and returns every outcome.
func fire(client *http.Client, n, conns int, method, url string, body []byte, headers ...string) []outcome {
	out := make([]outcome, n)
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= n {
					return
				}
				out[k] = do(client, method, url, body, headers...)
			}
		})
	}
	wg.Wait()
	return out
}

func do(client *http.Client, method, url string, body []byte, headers ...string) outcome {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return outcome{err: err}
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return outcome{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

func statuses(outs []outcome) map[int]int {
	m := map[int]int{}
	for _, o := range outs {
		if o.err != nil {
			m[-1]++
			continue
		}
		m[o.status]++
	}
	return m
}

// 2 workers, 100/hour (T = 36 s: nothing refills during the test), 300
// requests over 30 kept-alive connections, which both workers serve:
// exactly 100 pass. Then 100/min over a timed burst: 100 + what GCRA
// refills while it runs, ⌊elapsed / 0.6 s⌋ (+1 at the edge), and no more.
func TestRateLimitExactAcrossWorkers(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--rate-limit", "100/hour")
	client := pooledClient(30)
	before := c.snapshot()
	outs := fire(client, 300, 30, "POST", "http://"+c.addr+"/v1/hash/sha256", []byte("hello"))
	got := statuses(outs)
	if got[200] != 100 || got[429] != 200 {
		t.Fatalf("300 requests, 100/hour, 2 workers: %v; want exactly 100 × 200 and 200 × 429", got)
	}
	// The heartbeats tell: both workers served some of the burst.
	c.waitFor(5*time.Second, "both workers to have served part of the burst", func() bool {
		served := 0
		for _, w := range c.snapshot().Workers {
			for _, b := range before.Workers {
				if b.PID == w.PID && w.Requests > b.Requests+10 {
					served++
				}
			}
		}
		return served == 2
	})
	for _, o := range outs {
		switch o.status {
		case 200:
			if o.header.Get("RateLimit-Policy") != `"default";q=100;w=3600` || !strings.HasPrefix(o.header.Get("RateLimit"), `"default";r=`) {
				t.Errorf("200: RateLimit-Policy %q, RateLimit %q", o.header.Get("RateLimit-Policy"), o.header.Get("RateLimit"))
			}
		case 429:
			ra, _ := strconv.Atoi(o.header.Get("Retry-After"))
			if ra < 1 || ra > 37 || o.header.Get("RateLimit") == "" || !bytes.Contains(o.body, []byte(`"code":"rate_limited"`)) ||
				o.header.Get("Content-Type") != "application/json" {
				t.Fatalf("429: Retry-After %q, RateLimit %q, %s %s", o.header.Get("Retry-After"), o.header.Get("RateLimit"),
					o.header.Get("Content-Type"), o.body)
			}
			if !strings.HasPrefix(o.header.Get("RateLimit"), `"default";r=0;t=`) {
				t.Errorf("429: RateLimit %q; want r=0", o.header.Get("RateLimit"))
			}
		}
	}
	// /health and /ready are not limited.
	for _, path := range []string{"/health", "/ready"} {
		if o := do(client, "GET", "http://"+c.addr+path, nil); o.status != 200 {
			t.Errorf("GET %s after the limit: %d", path, o.status)
		}
	}

	c2 := startCluster(t, nil, 2, "--workers", "2", "--rate-limit", "100/min")
	start := time.Now()
	got = statuses(fire(client, 400, 30, "POST", "http://"+c2.addr+"/v1/hash/sha256", []byte("hello")))
	elapsed := time.Since(start)
	refill := int(elapsed / (600 * time.Millisecond))
	if got[200] < 100 || got[200] > 100+refill+1 || got[200]+got[429] != 400 {
		t.Errorf("400 requests, 100/min, in %v: %v; want 100 to %d passed (100 + ⌊%v / 0.6 s⌋ + 1), the rest 429",
			elapsed, got, 100+refill+1, elapsed.Round(time.Millisecond))
	}
}

func writeKeys(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// API keys: 401 without a valid one (in either header), a key's own limit,
// and the file re-read on reload; an invalid file is refused by reload and
// the old keys keep working.
func TestAPIKeys(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	const alice, bob = "alice-0123456789abcdef", "bob-0123456789abcdef0"
	writeKeys(t, keys, "# test keys\n"+alice+" name=alice limit=5/hour\n"+bob+" name=bob\n")
	c := startCluster(t, nil, 2, "--workers", "2", "--api-keys", keys, "--rate-limit", "1000/hour")
	client := pooledClient(4)
	url := "http://" + c.addr + "/v1/hash/sha256"
	for _, h := range [][]string{nil, {"Authorization", "Bearer wrong-0123456789abcdef"}, {"X-API-Key", alice[:len(alice)-1]},
		{"Authorization", "Basic " + alice}} {
		o := do(client, "POST", url, []byte("x"), h...)
		if o.status != 401 || !bytes.Contains(o.body, []byte(`"code":"unauthorized"`)) || o.header.Get("WWW-Authenticate") == "" {
			t.Errorf("headers %q: %d %s; want 401 unauthorized with WWW-Authenticate", h, o.status, o.body)
		}
		if bytes.Contains(o.body, []byte("0123456789")) {
			t.Errorf("the 401 echoes the key: %s", o.body)
		}
	}
	for _, path := range []string{"/health", "/ready"} {
		if o := do(client, "GET", "http://"+c.addr+path, nil); o.status != 200 {
			t.Errorf("GET %s without a key: %d; want 200", path, o.status)
		}
	}
	// Alice's own limit, whichever header carries her key.
	got := map[int]int{}
	for i := range 8 {
		h := []string{"Authorization", "Bearer " + alice}
		if i%2 == 1 {
			h = []string{"X-API-Key", alice}
		}
		got[do(client, "POST", url, []byte("x"), h...).status]++
	}
	if got[200] != 5 || got[429] != 3 {
		t.Errorf("alice, 5/hour, 8 requests: %v; want 5 × 200, 3 × 429", got)
	}
	if o := do(client, "POST", url, []byte("x"), "X-API-Key", bob); o.status != 200 || o.header.Get("RateLimit-Policy") != `"default";q=1000;w=3600` {
		t.Errorf("bob (the default limit): %d, policy %q", o.status, o.header.Get("RateLimit-Policy"))
	}

	// Reload with bob removed and carol added.
	const carol = "carol-0123456789abcdef"
	writeKeys(t, keys, alice+" name=alice limit=5/hour\n"+carol+"\n")
	// Until a reload, nothing changes, even for a worker that restarts:
	// workers take the keys the primary accepted, not the file.
	c.killWorker(firstKey(c.readyPIDs()), 2)
	for _, k := range []string{bob, carol} {
		want := map[string]int{bob: 200, carol: 401}[k]
		for range 4 { // fresh connections reach both workers
			if o := do(freshClient(), "POST", url, []byte("x"), "X-API-Key", k); o.status != want {
				t.Errorf("the file edited, no reload, a worker restarted: %d; want %d", o.status, want)
			}
		}
	}
	old := c.readyPIDs()
	if _, stderr, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid reload: exit %d: %s", code, stderr)
	}
	c.waitFor(20*time.Second, "the reload to replace both workers", func() bool {
		ready := c.readyPIDs()
		for pid := range ready {
			if old[pid] {
				return false
			}
		}
		return len(ready) == 2 && !c.snapshot().Reloading
	})
	if o := do(pooledClient(1), "POST", url, []byte("x"), "X-API-Key", bob); o.status != 401 {
		t.Errorf("bob after his key was removed and a reload: %d; want 401", o.status)
	}
	if o := do(pooledClient(1), "POST", url, []byte("x"), "X-API-Key", carol); o.status != 200 {
		t.Errorf("carol after her key was added and a reload: %d; want 200", o.status)
	}
	if o := do(pooledClient(1), "POST", url, []byte("x"), "X-API-Key", alice); o.status != 429 {
		t.Errorf("alice after a reload: %d; want still 429 (the table outlives workers)", o.status)
	}
	// An invalid file: the reload is refused, and nothing changes.
	writeKeys(t, keys, "short name=x\n")
	_, stderr, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin)
	if code != 1 || !strings.Contains(stderr, "api keys") || strings.Contains(stderr, "short") {
		t.Errorf("reload with an invalid keys file: exit %d, %q; want 1 naming the file's line, not the key", code, stderr)
	}
	if o := do(pooledClient(1), "POST", url, []byte("x"), "X-API-Key", carol); o.status != 200 {
		t.Errorf("carol after a refused reload: %d; want 200", o.status)
	}
}

// The box's cache: a miss, then a hit from any worker, a 304 for the
// ETag, another ETag for other params, and no cache for passwords; its
// counts in /metrics.
func TestResultCacheOneBox(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2")
	client := pooledClient(8)
	body := bytes.Repeat([]byte("the same input, compressed once "), 4096)
	url := "http://" + c.addr + "/v1/compress/zstd?level=3"
	first := do(client, "POST", url, body)
	etag := first.header.Get("ETag")
	if first.status != 200 || first.header.Get("X-Cache") != "miss" || len(etag) < 20 || etag[0] != '"' {
		t.Fatalf("first: %d X-Cache %q ETag %q", first.status, first.header.Get("X-Cache"), etag)
	}
	// Every worker, on fresh connections, gets the box's copy.
	var hit outcome
	c.waitFor(5*time.Second, "a hit", func() bool {
		hit = do(freshClient(), "POST", url, body)
		return hit.header.Get("X-Cache") == "hit-box"
	})
	for range 6 {
		o := do(freshClient(), "POST", url, body)
		if o.header.Get("X-Cache") != "hit-box" || !bytes.Equal(o.body, first.body) || o.header.Get("ETag") != etag {
			t.Fatalf("hit: X-Cache %q, same body %v, ETag %q", o.header.Get("X-Cache"), bytes.Equal(o.body, first.body), o.header.Get("ETag"))
		}
	}
	nm := do(client, "POST", url, body, "If-None-Match", `W/"other", `+etag)
	if nm.status != 304 || len(nm.body) != 0 || nm.header.Get("ETag") != etag {
		t.Errorf("If-None-Match: %d, %d bytes, ETag %q; want 304, none, the same", nm.status, len(nm.body), nm.header.Get("ETag"))
	}
	if o := do(client, "POST", url, append(body, '*'), "If-None-Match", `*`); o.status != 200 {
		t.Errorf("If-None-Match: * on an input never sent: %d; want 200 (the work done)", o.status)
	}
	if o := do(client, "POST", url, body, "If-None-Match", `"stale"`); o.status != 200 {
		t.Errorf("If-None-Match of another: %d; want 200", o.status)
	}
	if o := do(client, "POST", "http://"+c.addr+"/v1/compress/zstd?level=4", body); o.header.Get("ETag") == etag || o.header.Get("X-Cache") != "miss" {
		t.Errorf("level 4: ETag %q X-Cache %q; want another ETag, a miss", o.header.Get("ETag"), o.header.Get("X-Cache"))
	}
	if o := do(client, "POST", url, append(body, '!')); o.header.Get("ETag") == etag {
		t.Error("another input, the same ETag")
	}
	pw := do(client, "POST", "http://"+c.addr+"/v1/password/hash/bcrypt", []byte(`{"password":"correct horse battery"}`),
		"Content-Type", "application/json")
	if pw.status != 200 || pw.header.Get("ETag") != "" || pw.header.Get("X-Cache") != "" {
		t.Errorf("password hash: %d ETag %q X-Cache %q; want 200 and never cached", pw.status, pw.header.Get("ETag"), pw.header.Get("X-Cache"))
	}
	// An error is not tagged.
	if o := do(client, "POST", "http://"+c.addr+"/v1/decompress/zstd", []byte("not zstd")); o.header.Get("ETag") != "" {
		t.Errorf("a 4xx carries ETag %q", o.header.Get("ETag"))
	}
	// /health: this worker's counts and the box's, evictions included.
	var h struct {
		Cache struct {
			Misses uint64 `json:"misses"`
			Box    *struct {
				Entries   int64  `json:"entries"`
				Evictions uint64 `json:"evictions"`
				Hits      uint64 `json:"hits"`
			} `json:"box"`
		} `json:"cache"`
	}
	if _, err := getJSON(freshClient(), "http://"+c.addr+"/health", &h); err != nil || h.Cache.Box == nil ||
		h.Cache.Box.Entries < 3 || h.Cache.Box.Hits < 7 {
		t.Errorf("/health cache: %+v, %v; want the box's entries (≥ 3) and hits (≥ 7)", h.Cache, err)
	}
	c.waitFor(5*time.Second, "the scrape to count the hits", func() bool {
		s := c.scrape()
		return s.sum("hybrid_cache_requests_total", "result=hit", "tier=box") >= 7 &&
			s.sum("hybrid_cache_requests_total", "result=not_modified") == 1 && s.sum("hybrid_cache_entries") >= 3
	})
}

// haproxy starts a load balancer on a free loopback port in front of
// backends, keeping connections to them alive.
func haproxy(t *testing.T, backends ...string) string {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("!!! SKIPPED: haproxy is not installed (apt-get install haproxy); the two-instance test did NOT run !!!")
	}
	port := freeTCPPort(t)
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, b)
	}
	cfg := fmt.Sprintf(`global
  maxconn 2000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  retries 0
frontend fe
  bind 127.0.0.1:%d
  default_backend be
backend be
  balance roundrobin
  http-reuse always
%s`, port, servers.String())
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", path, "-db")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy:\n%s", out.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for do(freshClient(), "GET", "http://"+addr+"/health", nil).status != 200 {
		if time.Now().After(deadline) {
			t.Fatalf("haproxy on %s not serving /health after 10 s:\n%s", addr, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return addr
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Two instances, one Redis, one real load balancer: the limit holds
// exactly across both, a result computed through one is a hit through the
// other, and a reload of one under load through the balancer fails no
// request.
func TestTwoInstancesBehindALoadBalancer(t *testing.T) {
	// One Redis for the limits, one for the cache, as the docs say.
	rs, rc := redistest.Start(t), redistest.Start(t)
	keys := filepath.Join(t.TempDir(), "keys")
	const limited, free = "limited-0123456789abcdef", "unlimited-0123456789abcd"
	writeKeys(t, keys, limited+" name=limited limit=100/hour\n"+free+" name=free limit=off\n")
	args := []string{"--workers", "1", "--api-keys", keys, "--redis", rs.URL(), "--redis-cache", rc.URL(), "--redis-timeout", "500ms"}
	a := startCluster(t, nil, 1, args...)
	b := startCluster(t, nil, 1, args...)
	lb := haproxy(t, a.addr, b.addr)
	client := pooledClient(30)

	got := statuses(fire(client, 300, 30, "POST", "http://"+lb+"/v1/hash/sha256", []byte("x"), "X-API-Key", limited))
	if got[200] != 100 || got[429] != 200 {
		t.Errorf("300 requests through the balancer to 2 instances, 100/hour: %v; want exactly 100 × 200 and 200 × 429", got)
	}
	// Both instances decided (their heartbeats carry the counts).
	a.waitFor(5*time.Second, "both instances to have decided part of the 300", func() bool {
		na, nb := a.scrape().sum("hybrid_access_requests_total"), b.scrape().sum("hybrid_access_requests_total")
		return na >= 50 && nb >= 50 && na+nb == 300
	})

	// Computed through A, a hit through B, from Redis.
	body := bytes.Repeat([]byte("shared across hosts "), 8192)
	url := "/v1/compress/zstd?level=5"
	first := do(client, "POST", "http://"+a.addr+url, body, "X-API-Key", free)
	if first.status != 200 || first.header.Get("X-Cache") != "miss" {
		t.Fatalf("through A: %d X-Cache %q", first.status, first.header.Get("X-Cache"))
	}
	c := pooledClient(1)
	a.waitFor(5*time.Second, "A's result in Redis", func() bool {
		n, _ := rc.Do("EVAL", "return #redis.call('KEYS', 'hybrid:cache:*')", "0")
		return n == ":1"
	})
	o := do(c, "POST", "http://"+b.addr+url, body, "X-API-Key", free)
	if o.status != 200 || o.header.Get("X-Cache") != "hit-redis" || !bytes.Equal(o.body, first.body) || o.header.Get("ETag") != first.header.Get("ETag") {
		t.Errorf("through B: %d X-Cache %q, same body %v", o.status, o.header.Get("X-Cache"), bytes.Equal(o.body, first.body))
	}
	if n, _ := rs.Do("EVAL", "return #redis.call('KEYS', 'hybrid:cache:*')", "0"); n != ":0" {
		t.Errorf("the limits' Redis holds %s cached results; want none", n)
	}
	// Another tenant never gets (nor learns of) that result.
	if o := do(c, "POST", "http://"+b.addr+url, body, "X-API-Key", limited); o.status == 200 && o.header.Get("X-Cache") != "miss" {
		t.Errorf("another key, the same input: X-Cache %q; want miss", o.header.Get("X-Cache"))
	}
	if o := do(c, "POST", "http://"+b.addr+url, body, "X-API-Key", free); o.header.Get("X-Cache") != "hit-box" {
		// B's box took a copy of Redis' answer.
		t.Logf("through B again: X-Cache %q (the box's copy is filled asynchronously)", o.header.Get("X-Cache"))
	}

	// A reload of A under kept-alive load through the balancer.
	ld := startLoadPost("http://"+lb+"/v1/hash/sha256", 8, "X-API-Key", free)
	time.Sleep(300 * time.Millisecond)
	old := a.readyPIDs()
	a.signal(syscall.SIGHUP)
	a.waitFor(20*time.Second, "A's reload", func() bool {
		ready := a.readyPIDs()
		for pid := range ready {
			if old[pid] {
				return false
			}
		}
		return len(ready) == 1 && !a.snapshot().Reloading
	})
	time.Sleep(300 * time.Millisecond)
	ok, failed, errs := ld.stop()
	if failed != 0 || ok < 50 {
		t.Errorf("through the balancer during A's reload: %d ok, %d failed: %v", ok, failed, errs)
	}
	t.Logf("reload of A under load through haproxy: %d requests, %d failed", ok, failed)
}

// startLoadPost posts to url from clients kept-alive connections until stop.
func startLoadPost(url string, clients int, headers ...string) *load {
	cs := make([]*http.Client, clients)
	for i := range cs {
		cs[i] = pooledClient(1)
	}
	return startLoadFunc(cs, func(client *http.Client) error {
		o := do(client, "POST", url, []byte("load"), headers...)
		if o.err == nil && o.status != 200 {
			return fmt.Errorf("status %d: %s", o.status, o.body)
		}
		return o.err
	})
}

// Redis stopped in the middle and started again, for each --redis-fail:
// local keeps the limit per box, open admits, closed answers 503; each
// failure is counted and WARNed; back up, Redis decides again.
func TestRedisDownAndBack(t *testing.T) {
	for _, mode := range []string{"local", "open", "closed"} {
		t.Run(mode, func(t *testing.T) {
			rs := redistest.Start(t)
			c := startCluster(t, nil, 1, "--workers", "1", "--rate-limit", "10/hour", "--redis", rs.URL(),
				"--redis-fail", mode, "--redis-timeout", "200ms")
			client := pooledClient(4)
			url := "http://" + c.addr + "/v1/hash/sha256"
			if got := statuses(fire(client, 4, 4, "POST", url, []byte("x"))); got[200] != 4 {
				t.Fatalf("before: %v", got)
			}
			rs.Stop()
			start := time.Now()
			outs := fire(client, 20, 4, "POST", url, []byte("x"))
			took := time.Since(start)
			got := statuses(outs)
			switch mode {
			case "local":
				// The box's table was charged with the 4 Redis admitted:
				// 6 more pass, not a fresh burst.
				if got[200] != 6 || got[429] != 14 {
					t.Errorf("Redis down, local: %v; want 6 × 200 (the box's own limit, 4 used), 14 × 429", got)
				}
			case "open":
				if got[200] != 20 {
					t.Errorf("Redis down, open: %v; want 20 × 200", got)
				}
			case "closed":
				if got[503] != 20 || !bytes.Contains(outs[0].body, []byte(`"code":"rate_limit_unavailable"`)) {
					t.Errorf("Redis down, closed: %v %s; want 20 × 503 rate_limit_unavailable", got, outs[0].body)
				}
			}
			// Each decision waits at most the timeout: 20 over 4 connections.
			if took > time.Duration(math.Ceil(20.0/4))*(200*time.Millisecond)+3*time.Second {
				t.Errorf("20 decisions with Redis down took %v", took)
			}
			c.waitFor(5*time.Second, "the errors in /metrics", func() bool {
				return c.scrape().sum("hybrid_ratelimit_redis_errors_total") >= 20
			})
			if len(c.logs.find("rate limit: Redis failed")) == 0 {
				t.Error("no WARN for the Redis failure")
			}
			rs.Restart()
			// Redis is empty again: once a request reached it (its key
			// exists), it decides: that one and 9 more pass.
			c.waitFor(10*time.Second, "Redis to decide again", func() bool {
				do(client, "POST", url, []byte("x"))
				n, _ := rs.Do("EXISTS", "hybrid:rl:ip:127.0.0.1")
				return n == ":1"
			})
			if got := statuses(fire(client, 20, 4, "POST", url, []byte("x"))); got[200] != 9 || got[429] != 11 {
				t.Errorf("Redis back (empty, one used by the wait): %v; want 9 × 200, 11 × 429", got)
			}
		})
	}
}

// A Redis that accepts and never answers costs the first request its
// timeout, then the breaker answers at once until Redis is back.
func TestRedisHangingFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn) // never answered
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	url := "redis://" + ln.Addr().String() + "/0"
	c := startCluster(t, nil, 1, "--workers", "1", "--rate-limit", "1000/hour", "--redis", url, "--redis-cache", url,
		"--redis-timeout", "300ms")
	client := pooledClient(4)
	body := bytes.Repeat([]byte("z"), 64<<10)
	start := time.Now()
	outs := fire(client, 40, 4, "POST", "http://"+c.addr+"/v1/compress/zstd?level=3", body)
	took := time.Since(start)
	if got := statuses(outs); got[200] != 40 {
		t.Fatalf("Redis hanging, --redis-fail local: %v; want 40 × 200", got)
	}
	// Without the breaker: 40 × (300 ms limiter + 300 ms cache) over 4
	// connections is 6 s; with it, the first few pay.
	if took > 3*time.Second {
		t.Errorf("40 requests with Redis hanging took %v; want the breaker to fail fast", took)
	}
	if len(c.logs.find("redis: failing")) == 0 {
		t.Error("no WARN when Redis started failing")
	}
	t.Logf("40 requests with a hanging Redis: %v", took.Round(time.Millisecond))
}

// The box's cache stays within --cache-size: past it the least recently
// used results go, and /health and /metrics count them.
func TestResultCacheEvicts(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--cache-size", "1MiB", "--cache-max-entry", "512KiB")
	client := pooledClient(1)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 8 {
		body := make([]byte, 300<<10) // incompressible: the result is as large
		for j := range body {
			body[j] = byte(r.Uint32())
		}
		if o := do(client, "POST", "http://"+c.addr+"/v1/compress/s2", body); o.status != 200 {
			t.Fatalf("#%d: %d %s", i, o.status, o.body)
		}
	}
	var h struct {
		Cache struct {
			Box *struct {
				Bytes     int64  `json:"bytes"`
				Evictions uint64 `json:"evictions"`
			} `json:"box"`
		} `json:"cache"`
	}
	c.waitFor(5*time.Second, "evictions in /health", func() bool {
		getJSON(freshClient(), "http://"+c.addr+"/health", &h)
		return h.Cache.Box != nil && h.Cache.Box.Evictions >= 4
	})
	if h.Cache.Box.Bytes > 1<<20 {
		t.Errorf("the box's cache holds %d bytes; --cache-size is 1 MiB", h.Cache.Box.Bytes)
	}
	if e := c.scrape().sum("hybrid_cache_evictions_total"); e < 4 {
		t.Errorf("hybrid_cache_evictions_total %v; want ≥ 4", e)
	}
}
