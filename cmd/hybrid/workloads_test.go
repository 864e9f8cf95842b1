package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

type reply struct {
	status int
	header http.Header
	body   []byte
}

// keepAlive is the client of post: it keeps connections open, as load
// balancers and browsers do, so that every workload test also runs on
// reused connections.
var keepAlive = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func post(t *testing.T, url string, body []byte) reply {
	t.Helper()
	resp, err := keepAlive.Post(url, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read: %v", url, err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

func withMode(url, mode string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "mode=" + mode
}

// Every workload gives byte-identical results inline, on the pool and in an
// isolated child.
func TestModesGiveIdenticalResults(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--allow-mode-override", "--cache-size", "0") // each mode computes
	base := "http://" + c.addr
	data := bytes.Repeat([]byte("the same bytes in every mode "), 3000)
	var requests []struct {
		url  string
		body []byte
	}
	add := func(url string, body []byte) {
		requests = append(requests, struct {
			url  string
			body []byte
		}{url, body})
	}
	for _, algo := range []string{"sha256", "sha512", "sha1", "md5", "blake2b-256", "blake2b-512", "blake3", "xxh3-64", "crc32c"} {
		add(base+"/v1/hash/"+algo, data)
	}
	add(base+"/v1/hash/sha256?encoding=base64", data)
	for _, codec := range []string{"gzip", "zstd", "s2", "snappy", "brotli"} {
		add(base+"/v1/compress/"+codec, data)
		packed := post(t, base+"/v1/compress/"+codec, data).body
		add(base+"/v1/decompress/"+codec, packed)
	}
	add(base+"/v1/password/verify", []byte(`{"password":"x","hash":"$2y$04$uaOauqhMStNeUPy5tCfjRuVS7VCRzbaTC29rew2FLlLO95pn9kOnm"}`))
	add(base+"/v1/hash/nope", data)
	for _, r := range requests {
		inline := post(t, withMode(r.url, "inline"), r.body)
		for _, mode := range []string{"pool", "isolate"} {
			other := post(t, withMode(r.url, mode), r.body)
			if inline.status != other.status || !bytes.Equal(inline.body, other.body) {
				t.Errorf("%s: inline %d %.80q vs %s %d %.80q", r.url, inline.status, inline.body, mode, other.status, other.body)
			}
			if got := other.header.Get("X-Hybrid-Mode"); inline.status == 200 && got != mode {
				t.Errorf("%s: X-Hybrid-Mode = %q; want %s", r.url, got, mode)
			}
		}
	}
	if r := post(t, base+"/v1/decompress/zstd", post(t, base+"/v1/compress/zstd?level=19", data).body); !bytes.Equal(r.body, data) {
		t.Errorf("zstd level 19 round trip over HTTP lost data")
	}
}

func TestModeOverrideIsOffByDefault(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1")
	r := post(t, "http://"+c.addr+"/v1/hash/sha256?mode=inline", []byte("x"))
	if r.status != 400 || !strings.Contains(string(r.body), "allow-mode-override") {
		t.Errorf("?mode= without --allow-mode-override = %d %s; want 400 naming the flag", r.status, r.body)
	}
}

// startFullPool starts one worker with one run slot and a queue of one, and
// fills both with 1.5 s tasks; wg ends when they have.
func startFullPool(t *testing.T) (*cluster, *sync.WaitGroup) {
	t.Helper()
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--pool-size", "1", "--pool-queue", "1")
	base := "http://" + c.addr
	var wg sync.WaitGroup
	for range 2 { // one runs, one waits: the pool and its queue are full
		wg.Add(1)
		go func() { defer wg.Done(); post(t, base+"/_test/task?ms=1500", nil) }()
	}
	c.waitFor(5*time.Second, "a full pool", func() bool {
		var h struct {
			Pool struct{ Running, Waiting int }
		}
		getJSON(freshClient(), base+"/health", &h)
		return h.Pool.Running == 1 && h.Pool.Waiting == 1
	})
	return c, &wg
}

// Overload: a full pool refuses at once with 503 + Retry-After, health still
// answers promptly, and afterwards everything succeeds again.
func TestOverloadGetsFast503(t *testing.T) {
	c, wg := startFullPool(t)
	base := "http://" + c.addr
	for range 5 {
		start := time.Now()
		r := post(t, base+"/v1/hash/sha256", []byte("x"))
		took := time.Since(start)
		if r.status != 503 || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), `"code":"overloaded"`) {
			t.Errorf("request to a full pool = %d %s (Retry-After %q); want 503 overloaded with Retry-After",
				r.status, r.body, r.header.Get("Retry-After"))
		}
		if took > 250*time.Millisecond {
			t.Errorf("503 took %v; want it at once", took)
		}
	}
	start := time.Now()
	if status, err := getJSON(freshClient(), base+"/health", nil); err != nil || status != 200 || time.Since(start) > 250*time.Millisecond {
		t.Errorf("/health under overload = %d %v after %v; want a prompt 200", status, err, time.Since(start))
	}
	wg.Wait()
	if r := post(t, base+"/v1/hash/sha256", []byte("x")); r.status != 200 {
		t.Errorf("after the load: %d %s; want 200", r.status, r.body)
	}
	var h struct {
		Pool struct{ Rejected, Completed int }
	}
	getJSON(freshClient(), base+"/health", &h)
	if h.Pool.Rejected != 5 || h.Pool.Completed != 3 {
		t.Errorf("pool stats %+v; want 5 rejected, 3 completed", h.Pool)
	}
}

// A task queued past its deadline gets 504 and never runs.
func TestQueuedTaskPastDeadlineGets504(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--pool-size", "1", "--task-timeout", "400ms")
	base := "http://" + c.addr
	occupant := make(chan reply, 1)
	go func() { occupant <- post(t, base+"/_test/task?ms=1000&stubborn=1", nil) }()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	r := post(t, base+"/_test/task?ms=0", nil)
	if r.status != 504 || !strings.Contains(string(r.body), `"code":"task_timeout"`) {
		t.Errorf("queued past deadline = %d %s; want 504 task_timeout", r.status, r.body)
	}
	if took := time.Since(start); took > 800*time.Millisecond {
		t.Errorf("504 after %v; want it at the 400ms deadline, not when the slot frees", took)
	}
	// The occupant overran its deadline: it is answered at it, and its
	// task keeps the slot until it returns.
	if r := <-occupant; r.status != 504 {
		t.Errorf("the stubborn occupant = %d %s; want 504 at its deadline", r.status, r.body)
	}
	var h struct {
		Pool struct {
			TimedOut  int `json:"timed_out"`
			Completed int
		}
	}
	c.waitFor(3*time.Second, "the occupant's task to return", func() bool {
		getJSON(freshClient(), base+"/health", &h)
		return h.Pool.Completed == 1
	})
	if h.Pool.TimedOut != 1 {
		t.Errorf("pool %+v; want 1 timed out (never ran) and 1 completed (the occupant)", h.Pool)
	}
}

// --task-timeout bounds the response in pool mode too: a task that ignores
// its deadline (CPU-bound work that cannot be interrupted) is answered 504
// at the deadline, not when it returns, and holds its run slot until then,
// so overrunning tasks never hold more cores than the pool has.
func TestOverrunPooledTaskAnsweredAtDeadline(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--pool-size", "1", "--task-timeout", "300ms",
		"--queue-wait", "250ms")
	base := "http://" + c.addr
	client := keptAlive()
	start := time.Now()
	r := send(t, client, "POST", base+"/_test/task?ms=2000&stubborn=1", nil, nil)
	r.expect(t, "a stubborn 2 s task, 300 ms deadline", 504, "task_timeout", 700*time.Millisecond)
	// The slot is still taken: the next task waits in the queue for it and
	// is itself answered at its deadline, without running.
	r = send(t, client, "POST", base+"/_test/task?ms=0", nil, nil)
	r.expect(t, "a task queued behind the overrun", 504, "task_timeout", 700*time.Millisecond)
	var h struct {
		Pool struct {
			TimedOut  int `json:"timed_out"`
			Completed int
		}
	}
	c.waitFor(3*time.Second, "the stubborn task to return", func() bool {
		getJSON(freshClient(), base+"/health", &h)
		return h.Pool.Completed == 1
	})
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("the stubborn task completed after %v; it sleeps 2 s", took)
	}
	// And the worker serves again, on the same kept-alive connection.
	send(t, client, "POST", base+"/_test/task?ms=0", nil, nil).expect(t, "after the overrun", 200, "", time.Second)
}

// A panicking task is a 500 for its request; the worker lives on.
func TestPanickingTaskIs500(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--allow-mode-override", "--cache-size", "0") // each mode computes
	base := "http://" + c.addr
	pid := c.snapshot().Workers[0].PID
	for _, mode := range []string{"pool", "inline"} {
		r := post(t, base+"/_test/task?panic=1&mode="+mode, nil)
		if r.status != 500 || !strings.Contains(string(r.body), `"code":"internal"`) {
			t.Errorf("panicking task (%s) = %d %s; want 500 internal", mode, r.status, r.body)
		}
	}
	if r := post(t, base+"/v1/hash/md5", []byte("abc")); r.status != 200 {
		t.Errorf("after the panics: %d %s", r.status, r.body)
	}
	if s := c.snapshot(); s.Workers[0].PID != pid || s.Forks != 1 {
		t.Errorf("worker pid %d → %d, forks %d; want the same worker", pid, s.Workers[0].PID, s.Forks)
	}
	// The worker logs the panic after it answered: wait for the line.
	if l := c.waitLog("task panicked", 5*time.Second); l["stack"] == nil {
		t.Errorf("the panic's log line has no stack: %v", l)
	}
}

// A 1 KiB zstd bomb that inflates past --max-output is refused, and the
// worker's memory stays bounded.
func TestDecompressionBombOverHTTP(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--max-output", "8MiB")
	base := "http://" + c.addr
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	bomb := enc.EncodeAll(make([]byte, 256<<20), nil) // 256 MiB of zeros
	if len(bomb) > 64<<10 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	rss := func() uint64 {
		var h struct {
			RSS uint64 `json:"rss_bytes"`
		}
		getJSON(freshClient(), base+"/health", &h)
		return h.RSS
	}
	before := rss()
	for range 3 {
		r := post(t, base+"/v1/decompress/zstd", bomb)
		if r.status != 413 || !strings.Contains(string(r.body), "output_too_large") {
			t.Fatalf("bomb (%d bytes → 256 MiB) = %d %s; want 413", len(bomb), r.status, r.body)
		}
	}
	time.Sleep(600 * time.Millisecond) // RSS is sampled every 500ms
	after := rss()
	t.Logf("worker RSS %d MiB before, %d MiB after 3 bombs", before>>20, after>>20)
	// Bounded by the cap (8 MiB; the bomb inflates to 256 MiB): its window
	// and output buffer. The race detector's shadow memory multiplies RSS.
	bound := uint64(64 << 20)
	if len(buildFlags) > 0 {
		bound *= 4
	}
	if after > before+bound {
		t.Errorf("worker RSS %d MiB → %d MiB after the bombs; want growth within %d MiB for an 8 MiB cap",
			before>>20, after>>20, bound>>20)
	}
	for _, codec := range []string{"gzip", "zstd", "brotli", "s2", "snappy"} {
		if r := post(t, base+"/v1/decompress/"+codec, []byte("garbage garbage")); r.status != 422 {
			t.Errorf("corrupt %s = %d %s; want 422", codec, r.status, r.body)
		}
	}
}
