package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The hostile-input tests (issue 11) share one shape: a cluster of one
// worker, one request at a time from a kept-alive client, and for each case
// the typed error, the time it took against a stated bound, the worker's
// peak memory against a stated bound, and the same worker afterwards.

// hostileCluster starts one worker with args and returns it with the pid of
// its worker.
func hostileCluster(t *testing.T, args ...string) (*cluster, int) {
	t.Helper()
	c := startCluster(t, nil, 1, append([]string{"--workers", "1"}, args...)...)
	pids := c.readyPIDs()
	if len(pids) != 1 {
		t.Fatalf("want 1 ready worker, got %v", pids)
	}
	for pid := range pids {
		return c, pid
	}
	panic("unreachable")
}

// keptAlive is a client whose connections stay open between requests, as a
// browser's or a load balancer's do.
func keptAlive() *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
}

// hostileResult is one response: its status, error code, body and time.
type hostileResult struct {
	Status  int
	Code    string
	Message string
	Body    []byte
	Header  http.Header
	Took    time.Duration
}

// send makes one request on client and reads the whole answer.
func send(t *testing.T, client *http.Client, method, url string, body []byte, header map[string]string) hostileResult {
	t.Helper()
	return sendFrom(t, client, method, url, bytes.NewReader(body), header)
}

// sendChunked is send with the body chunked (Transfer-Encoding: chunked,
// no Content-Length).
func sendChunked(t *testing.T, client *http.Client, method, url string, body []byte, header map[string]string) hostileResult {
	t.Helper()
	return sendFrom(t, client, method, url, io.MultiReader(bytes.NewReader(body)), header)
}

func sendFrom(t *testing.T, client *http.Client, method, url string, body io.Reader, header map[string]string) hostileResult {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	r := hostileResult{Status: resp.StatusCode, Body: b, Header: resp.Header, Took: time.Since(start)}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode >= 400 && json.Unmarshal(b, &e) == nil {
		r.Code, r.Message = e.Error.Code, e.Error.Message
	}
	return r
}

// expect checks r against a status, an error code ("" for none) and a time
// bound, and that the body is small (an error never echoes its input).
func (r hostileResult) expect(t *testing.T, what string, status int, code string, within time.Duration) {
	t.Helper()
	if r.Status != status || r.Code != code {
		t.Errorf("%s: got %d %q (%.200s), want %d %q", what, r.Status, r.Code, r.Body, status, code)
	}
	if r.Took > within {
		t.Errorf("%s: took %v, bound %v", what, r.Took.Round(time.Millisecond), within)
	}
	if r.Status >= 400 && len(r.Body) > 1024 {
		t.Errorf("%s: error body is %d bytes; an error must not echo its input", what, len(r.Body))
	}
	t.Logf("%s: %d %s in %v", what, r.Status, r.Code, r.Took.Round(time.Millisecond))
}

// peakRSS is a process's peak resident memory (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("worker %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("worker %d: no VmHWM", pid)
	return 0
}

// sameWorker checks that the worker pid still serves, was never restarted,
// and peaked under maxRSS bytes.
func (c *cluster) sameWorker(t *testing.T, pid int, maxRSS int64) {
	t.Helper()
	s := c.snapshot()
	if len(s.Workers) != 1 || s.Workers[0].PID != pid || s.Workers[0].Restarts != 0 {
		t.Errorf("the worker changed: want pid %d with no restart, got %+v", pid, s.Workers)
	}
	if peak := peakRSS(t, pid); peak > maxRSS {
		t.Errorf("worker %d peaked at %d MiB; bound %d MiB", pid, peak>>20, maxRSS>>20)
	} else {
		t.Logf("worker %d peak RSS %d MiB (bound %d MiB)", pid, peak>>20, maxRSS>>20)
	}
}
