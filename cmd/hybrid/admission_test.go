package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Admission by predicted waiting time, through the binary: a workload whose
// run time goes from 5 ms to 150 ms is admitted in full while fast, refused
// within a second once slow, with a Retry-After and no 504, and /health
// shows the estimate and the predicted wait.
func TestAdmissionFollowsTheWorkloadsDuration(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--pool-size", "1", "--queue-wait", "500ms")
	base := "http://" + c.addr
	var ms atomic.Int64
	ms.Store(5)
	type tally struct {
		mu       sync.Mutex
		byStatus map[int]int
		retry    map[string]int
		closed   map[int]int // responses that said Connection: close, by status
		lastRef  time.Time
		firstRef time.Time
		errs     []error
	}
	tl := &tally{byStatus: map[int]int{}, retry: map[string]int{}, closed: map[int]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const clients = 8
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Keep-alive, and POST: a refused request must not be retried
			// by the client behind the test's back.
			client := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Post(base+"/_test/task?ms="+strconv.FormatInt(ms.Load(), 10), "text/plain", nil)
				if err != nil {
					tl.mu.Lock()
					tl.errs = append(tl.errs, err)
					tl.mu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				now := time.Now()
				tl.mu.Lock()
				tl.byStatus[resp.StatusCode]++
				if resp.Close {
					tl.closed[resp.StatusCode]++
				}
				if resp.StatusCode == 503 {
					tl.retry[resp.Header.Get("Retry-After")]++
					if tl.firstRef.IsZero() {
						tl.firstRef = now
					}
					tl.lastRef = now
				}
				tl.mu.Unlock()
				if resp.StatusCode == 503 {
					time.Sleep(20 * time.Millisecond) // a polite client backs off a little
				}
			}
		}()
	}
	stopped := false
	halt := func() {
		if !stopped {
			close(stop)
			wg.Wait()
			stopped = true
		}
	}
	defer halt()

	// Fast: 7 tasks of 5 ms queued ahead on one slot are 35 ms: all admitted.
	time.Sleep(time.Second)
	tl.mu.Lock()
	fast := tl.byStatus[200]
	if tl.byStatus[503] != 0 || fast < 20 {
		t.Errorf("at 5 ms per task: %v; want only 200s (and at least 20)", tl.byStatus)
	}
	tl.mu.Unlock()

	// Slow: 7 × 150 ms = 1.05 s predicted > 500 ms: refusals within a second.
	ms.Store(150)
	switched := time.Now()
	var first time.Time
	for deadline := switched.Add(1500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		tl.mu.Lock()
		first = tl.firstRef
		tl.mu.Unlock()
		if !first.IsZero() {
			break
		}
	}
	if first.IsZero() || first.Sub(switched) > time.Second {
		t.Fatalf("no 503 within 1s of the task going from 5 ms to 150 ms (first at %v)", first.Sub(switched))
	}
	t.Logf("5 ms → 150 ms: first refusal after %v", first.Sub(switched).Round(time.Millisecond))
	time.Sleep(1500 * time.Millisecond) // steady state at 150 ms

	var h struct {
		Pool struct {
			QueueWaitMS     float64 `json:"queue_wait_ms"`
			PredictedWaitMS float64 `json:"predicted_wait_ms"`
			Waiting         int
			Classes         []struct {
				Name       string
				EstimateMS float64 `json:"estimate_ms"`
			}
		}
	}
	if _, err := getJSON(freshClient(), base+"/health", &h); err != nil {
		t.Fatal(err)
	}
	halt()
	var est float64
	for _, cl := range h.Pool.Classes {
		if cl.Name == "test-task/<4KiB" { // the workload, and its input size bucket
			est = cl.EstimateMS
		}
	}
	if h.Pool.QueueWaitMS != 500 || est < 100 || est > 300 {
		t.Errorf("/health pool = %+v; want queue_wait_ms 500 and test-task's estimate near 150 ms", h.Pool)
	}
	// About 500 ms ÷ 150 ms = 3–4 waiting (5 while the estimate is still
	// catching up): admission held the queue to the bound, where a count cap
	// of 1,024 would have let all 7 others wait.
	if h.Pool.Waiting > 5 || h.Pool.PredictedWaitMS > 500+300 {
		t.Errorf("/health pool = %+v; want ≤ 5 waiting and a predicted wait near the 500 ms bound", h.Pool)
	}
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if tl.byStatus[504] != 0 || len(tl.errs) != 0 || tl.byStatus[200]-fast < 5 {
		t.Errorf("statuses %v, errors %v; want no 504, no error, slow tasks still served", tl.byStatus, tl.errs)
	}
	// A refusal ends its connection, so that the client's next request can
	// reach a worker with room; a success keeps it.
	if tl.closed[503] != tl.byStatus[503] || tl.closed[200] != 0 {
		t.Errorf("Connection: close on %v of %v; want on every 503 and no 200", tl.closed, tl.byStatus)
	}
	if tl.retry["1"] == 0 || tl.retry[""] != 0 {
		t.Errorf("Retry-After values of the 503s: %v; want 1 s (predicted wait − bound < 1 s), always set", tl.retry)
	}
	if r := post(t, base+"/_test/task?ms=0", nil); r.status != 200 { // idle now: admitted
		t.Errorf("after the load: %d %s; want 200", r.status, r.body)
	}
}

// An overloaded pool refuses from the headers: a client that has sent the
// headers of a 16 MiB upload and its first 8 KiB (fasthttp reads that much
// of a body before any handler runs) reads its 503 without sending the
// rest, and the body is never buffered.
func TestOverloadRefusesBeforeTheBody(t *testing.T) {
	c, wg := startFullPool(t)
	defer wg.Wait()
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(conn, "POST /v1/hash/sha256 HTTP/1.1\r\nHost: hybrid\r\nContent-Length: %d\r\n\r\n", 16<<20)
	conn.Write(make([]byte, 8<<10))
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response to the start of an upload to a full pool: %v (want a 503 before the rest of the body)", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || !resp.Close || resp.Header.Get("Retry-After") == "" {
		t.Errorf("response %s, close=%v, Retry-After %q; want 503, Connection: close, Retry-After",
			resp.Status, resp.Close, resp.Header.Get("Retry-After"))
	}
	t.Logf("503 %v after the first 8 KiB of a 16 MiB body", time.Since(start).Round(time.Microsecond))
}

// A client that sends Expect: 100-continue gets the final answer from the
// headers and never uploads a body that would be refused: 503 from a full
// pool, 413 over --max-body, 404 and 405; and 100 Continue, then the
// answer, when the body is wanted, on a connection that stays open.
func TestExpectContinueAnswersFromTheHeaders(t *testing.T) {
	c, wg := startFullPool(t)
	ask := func(method, path string, length int) (*http.Response, string) {
		t.Helper()
		conn, err := net.Dial("tcp", c.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: hybrid\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", method, path, length)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%s %s with Expect: 100-continue and no body sent: %v; want the final answer from the headers", method, path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(body)
	}
	for _, tc := range []struct {
		method, path string
		length       int
		status       int
		code         string
	}{
		{"POST", "/v1/hash/sha256", 16 << 20, 503, "overloaded"},
		{"POST", "/v1/hash/sha256", 64 << 20, 413, "body_too_large"},
		{"POST", "/v1/nope", 1 << 20, 404, "not_found"},
		{"GET", "/v1/hash/sha256", 1 << 20, 405, "method_not_allowed"},
	} {
		resp, body := ask(tc.method, tc.path, tc.length)
		if resp.StatusCode != tc.status || !strings.Contains(body, `"code":"`+tc.code+`"`) || !resp.Close {
			t.Errorf("%s %s (%d bytes announced) = %s %s close=%v; want %d %s and Connection: close",
				tc.method, tc.path, tc.length, resp.Status, body, resp.Close, tc.status, tc.code)
		}
		if tc.status == 503 && resp.Header.Get("Retry-After") == "" {
			t.Errorf("503 without Retry-After")
		}
	}
	wg.Wait()

	// With room: 100 Continue, then the body, then the answer, twice on one
	// kept-alive connection.
	conn, err := net.Dial("tcp", c.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	for i := range 2 {
		fmt.Fprintf(conn, "POST /v1/hash/sha256 HTTP/1.1\r\nHost: hybrid\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 100 {
			t.Fatalf("request %d: %v %v; want 100 Continue before the body", i, resp, err)
		}
		io.WriteString(conn, "abc")
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: no answer after the body: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
		if resp.StatusCode != 200 || !strings.Contains(string(body), abc) || resp.Close {
			t.Errorf("request %d = %s %s close=%v; want 200 with sha256(abc), kept alive", i, resp.Status, body, resp.Close)
		}
	}
}
