package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// 1. Both workers take connections from the one shared socket.
func TestWorkersShareOneSocket(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2")
	snap := c.snapshot()
	if snap.WorkersReady != 2 || len(snap.Workers) != 2 {
		t.Fatalf("cluster = %+v; want 2 ready workers", snap)
	}
	want := map[int]bool{}
	for _, w := range snap.Workers {
		if w.State != procpool.StateReady {
			t.Errorf("worker %d state = %q; want ready", w.ID, w.State)
		}
		want[w.PID] = true
	}
	seen := map[int]bool{}
	client := freshClient()
	for i := 0; i < 500 && len(seen) < 2; i++ {
		var h health
		if status, err := getJSON(client, "http://"+c.addr+"/health", &h); err != nil || status != 200 {
			t.Fatalf("GET /health = %d, %v", status, err)
		}
		if !want[h.PID] {
			t.Fatalf("/health answered by pid %d, not a worker listed in /cluster %v", h.PID, want)
		}
		if h.PID == snap.PrimaryPID {
			t.Fatalf("the primary served a request")
		}
		seen[h.PID] = true
	}
	if len(seen) != 2 {
		t.Errorf("500 fresh connections reached workers %v; want both of %v", seen, want)
	}
}

// 2. A worker killed with SIGKILL is replaced after the backoff while the
// other keeps serving.
func TestKilledWorkerIsReplaced(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--restart-backoff", "300ms")
	snap := c.snapshot()
	victim := snap.Workers[0]
	l := startLoad("http://"+c.addr+"/health", []*http.Client{freshClient()})
	time.Sleep(200 * time.Millisecond)
	killed := time.Now()
	syscall.Kill(victim.PID, syscall.SIGKILL)
	var replacement procpool.WorkerInfo
	c.waitFor(5*time.Second, "a replacement worker", func() bool {
		for _, w := range c.snapshot().Workers {
			if w.ID == victim.ID && w.PID != victim.PID && w.State == procpool.StateReady {
				replacement = w
				return true
			}
		}
		return false
	})
	took := time.Since(killed)
	time.Sleep(200 * time.Millisecond)
	ok, failed, errs := l.stop()
	t.Logf("replacement pid %d ready %v after the kill (backoff 300ms); requests meanwhile: %d ok, %d failed %v",
		replacement.PID, took.Round(time.Millisecond), ok, failed, errs)
	if replacement.Restarts != 1 {
		t.Errorf("replacement restarts = %d; want 1", replacement.Restarts)
	}
	if took < 300*time.Millisecond {
		t.Errorf("replacement ready %v after the kill; want it to wait the 300ms backoff", took)
	}
	// One client: at most the one request in flight on the killed worker fails.
	if ok < 10 || failed > 1 {
		t.Errorf("during the restart: %d ok, %d failed; want requests to keep succeeding", ok, failed)
	}
	if s := c.snapshot(); s.Circuit != "closed" || s.CrashesInWindow != 1 {
		t.Errorf("after one crash: circuit %q, crashes %d; want closed, 1", s.Circuit, s.CrashesInWindow)
	}
	if crash := c.logs.find("worker crashed"); len(crash) != 1 || !strings.Contains(fmt.Sprint(crash[0]["status"]), "killed") {
		t.Errorf("crash log = %v; want one line naming the signal", crash)
	}
}

// faultFile returns the path of a test-hooks fault file and a setter.
func faultFile(t *testing.T) (env []string, set func(string)) {
	path := filepath.Join(t.TempDir(), "fault")
	set = func(fault string) {
		if err := os.WriteFile(path, []byte(fault), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set("")
	return []string{testHooksVar + "=" + path}, set
}

// 3. A crash loop opens the circuit: forks stay bounded, the primary and the
// healthy worker stay up, health says degraded; SIGHUP closes the circuit.
func TestCrashLoopOpensCircuit(t *testing.T) {
	env, setFault := faultFile(t)
	c := startCluster(t, env, 2, "--workers", "2", "--restart-backoff", "20ms",
		"--restart-backoff-max", "40ms", "--max-crashes", "3", "--crash-window", "1m")
	snap := c.snapshot()
	victim, healthy := snap.Workers[0], snap.Workers[1]

	setFault("crash") // every new worker now dies before ready
	syscall.Kill(victim.PID, syscall.SIGKILL)
	c.waitFor(10*time.Second, "the circuit to open", func() bool { return c.snapshot().Circuit == "open" })
	open := c.snapshot()
	time.Sleep(time.Second) // a fork bomb would keep forking here
	later := c.snapshot()

	if later.Forks != open.Forks {
		t.Errorf("forks went on after the circuit opened: %d then %d", open.Forks, later.Forks)
	}
	// 2 initial workers + 3 restarts that crash (the 4th crash opens it).
	if open.Forks > 2+3 {
		t.Errorf("forks_total = %d; want at most 5 with --max-crashes 3", open.Forks)
	}
	if later.CrashesInWindow != 4 {
		t.Errorf("crashes_in_window = %d; want 4", later.CrashesInWindow)
	}
	if !c.alive() {
		t.Fatal("the primary exited")
	}
	var h health
	if status, err := getJSON(freshClient(), "http://"+c.addr+"/health", &h); err != nil || status != 200 || h.PID != healthy.PID {
		t.Errorf("healthy worker: GET /health = %d %+v %v; want 200 from pid %d", status, h, err, healthy.PID)
	}
	var body map[string]any
	if status, err := getJSON(adminClient, "http://"+c.admin+"/health", &body); err != nil || status != 503 {
		t.Errorf("admin GET /health = %d %v; want 503", status, err)
	} else if reason, _ := body["reason"].(string); !strings.Contains(reason, "circuit open") {
		t.Errorf("admin health reason = %q; want it to say the circuit is open", reason)
	}
	errLine := c.waitLog("circuit open", time.Second)
	if errLine["level"] != "ERROR" || !strings.Contains(fmt.Sprint(errLine["status"]), "exit status 1") ||
		!strings.Contains(fmt.Sprint(errLine["stderr_tail"]), "crashing before ready") {
		t.Errorf("circuit log line = %v; want an ERROR with the exit status and the stderr tail", errLine)
	}

	setFault("")
	c.signal(syscall.SIGHUP)
	c.waitFor(10*time.Second, "the circuit to close and 2 workers to be ready", func() bool {
		s := c.snapshot()
		return s.Circuit == "closed" && s.WorkersReady == 2 && !s.Reloading
	})
	if status, err := getJSON(adminClient, "http://"+c.admin+"/health", nil); err != nil || status != 200 {
		t.Errorf("admin GET /health after reload = %d %v; want 200", status, err)
	}
}

// A worker that fails its start-up checks is not retried in a loop.
func TestConfigErrorOpensCircuitAtOnce(t *testing.T) {
	env, setFault := faultFile(t)
	setFault("config")
	c := startCluster(t, env, 0, "--workers", "2", "--restart-backoff", "20ms")
	c.waitFor(10*time.Second, "the circuit to open", func() bool { return c.snapshot().Circuit == "open" })
	time.Sleep(300 * time.Millisecond)
	s := c.snapshot()
	if s.Forks != 2 {
		t.Errorf("forks_total = %d; want 2 (no retry of a configuration error)", s.Forks)
	}
	if !strings.Contains(s.CircuitReason, "test hook: bad configuration") {
		t.Errorf("circuit reason = %q; want the worker's own message", s.CircuitReason)
	}
}

// A worker that stops sending heartbeats gets SIGQUIT (goroutine dump), then
// SIGKILL, and a replacement.
func TestHungWorkerIsReplaced(t *testing.T) {
	env, setFault := faultFile(t)
	setFault("hang")
	c := startCluster(t, env, 1, "--workers", "1", "--heartbeat-interval", "100ms",
		"--heartbeat-timeout", "500ms", "--restart-backoff", "20ms")
	hung := c.snapshot().Workers[0]
	setFault("")
	c.waitLog("worker hung", 5*time.Second)
	c.waitFor(10*time.Second, "a replacement for the hung worker", func() bool {
		s := c.snapshot()
		return s.WorkersReady == 1 && s.Workers[0].PID != hung.PID
	})
	// Go's SIGQUIT handler prints every goroutine's stack before it exits.
	c.waitFor(5*time.Second, "the hung worker's goroutine dump", func() bool {
		return strings.Contains(c.logs.String(), "goroutine ")
	})
}

// --max-requests recycles a worker gracefully: its successor is ready before
// it drains, and it is not counted as a crash.
func TestMaxRequestsRecycles(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--max-requests", "50", "--heartbeat-interval", "100ms")
	first := c.snapshot().Workers[0].PID
	client := freshClient()
	for range 60 {
		if status, err := getJSON(client, "http://"+c.addr+"/health", nil); err != nil || status != 200 {
			t.Fatalf("GET /health = %d %v", status, err)
		}
	}
	c.waitLog("recycling worker", 5*time.Second)
	c.waitFor(10*time.Second, "the recycled worker's successor", func() bool {
		s := c.snapshot()
		return len(s.Workers) == 1 && s.Workers[0].PID != first && s.Workers[0].State == procpool.StateReady
	})
	if s := c.snapshot(); s.CrashesInWindow != 0 {
		t.Errorf("crashes_in_window = %d after a recycle; want 0", s.CrashesInWindow)
	}
}

// --max-rss recycles a bloated worker, but never one younger than the
// minimum uptime (10 heartbeat intervals): a limit below a fresh worker's RSS
// recycles at a bounded rate instead of becoming a fork loop, and a recycle is
// never a crash.
func TestMaxRSSRecyclesAtABoundedRate(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--max-rss", "1MiB", "--heartbeat-interval", "100ms")
	start := time.Now()
	time.Sleep(3 * time.Second)
	s := c.snapshot()
	elapsed := time.Since(start)
	recycles := len(c.logs.find("recycling worker"))
	// One recycle per second at most, plus the first worker.
	if maxForks := int64(elapsed/time.Second) + 2; s.Forks < 2 || s.Forks > maxForks {
		t.Errorf("forks_total = %d after %v; want 2 to %d (a recycle per second at most)", s.Forks, elapsed, maxForks)
	}
	if recycles < 1 {
		t.Errorf("no recycle logged with --max-rss 1MiB")
	}
	if s.CrashesInWindow != 0 || s.Circuit != "closed" || s.WorkersReady != 1 {
		t.Errorf("after recycles: %+v; want no crash, circuit closed, a ready worker", s)
	}
	for _, w := range s.Workers {
		if w.State == procpool.StateReady && time.Since(w.StartedAt) > 3*time.Second {
			t.Errorf("worker %d (pid %d) was never recycled", w.ID, w.PID)
		}
	}
}

// 4. SIGTERM drains: an in-flight slow request completes with 200, new
// connections are refused, and the primary exits 0.
func TestGracefulShutdown(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 2, "--workers", "2")
	pids := c.readyPIDs()
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		status, err := getJSON(freshClient(), "http://"+c.addr+"/_test/sleep?ms=1500", nil)
		done <- result{status, err}
	}()
	time.Sleep(300 * time.Millisecond) // the request is in flight
	c.signal(syscall.SIGTERM)
	r := <-done
	if r.err != nil || r.status != 200 {
		t.Errorf("in-flight request across SIGTERM = %d, %v; want 200", r.status, r.err)
	}
	if code := c.wait(10 * time.Second); code != 0 {
		t.Errorf("primary exit code = %d; want 0", code)
	}
	for pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("worker %d still alive after the primary exited", pid)
		}
	}
	if _, err := net.DialTimeout("tcp", c.addr, time.Second); err == nil {
		t.Errorf("%s still accepts connections after shutdown", c.addr)
	}
}

// A second SIGINT forces the shutdown instead of waiting for the drain.
func TestSecondSIGINTForces(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1")
	go getJSON(freshClient(), "http://"+c.addr+"/_test/sleep?ms=20000", nil)
	time.Sleep(300 * time.Millisecond)
	c.signal(syscall.SIGINT)
	c.waitLog("graceful shutdown", 5*time.Second)
	c.signal(syscall.SIGINT)
	start := time.Now()
	if code := c.wait(5 * time.Second); code != 130 {
		t.Errorf("exit code after a forced shutdown = %d; want 130", code)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("forced shutdown took %v", took)
	}
}

// 5. A rolling reload under load, from clients with a new connection per
// request and from keep-alive clients that never retry (drain_test.go): with
// the shared socket no request fails, and afterwards every worker is new.
// Reuseport is measured and reported.
func TestReloadUnderLoad(t *testing.T) {
	for _, mode := range []string{procpool.ListenShared, procpool.ListenReusePort} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, nil, 2, "--workers", "2", "--listen-mode", mode)
			before := c.readyPIDs()
			l := startLoad("http://"+c.addr+"/health", []*http.Client{freshClient(), freshClient(), freshClient()})
			ka := startKeepAlive(c.addr, 4, []rawRequest{getRequest("/health")})
			const reloads = 3
			for i := range reloads {
				time.Sleep(300 * time.Millisecond)
				c.signal(syscall.SIGHUP)
				c.waitFor(20*time.Second, fmt.Sprintf("reload %d to complete", i+1), func() bool {
					s := c.snapshot()
					return !s.Reloading && s.WorkersReady == 2 && len(s.Workers) == 2
				})
			}
			time.Sleep(300 * time.Millisecond)
			ok, failed, errs := l.stop()
			kr := ka.stop()
			after := c.readyPIDs()
			for pid := range after {
				if before[pid] {
					t.Errorf("worker pid %d survived the reload", pid)
				}
			}
			t.Logf("listen-mode=%s: %d reloads under load: new connection per request: %d requests ok, %d failed %v; keep-alive: %v",
				mode, reloads, ok, failed, errs, kr)
			if ok < 100 || kr.ok < 100 {
				t.Errorf("only %d and %d requests succeeded; the load did not run", ok, kr.ok)
			}
			if mode == procpool.ListenShared && failed+kr.failed != 0 {
				t.Errorf("listen-mode=shared lost %d requests across the reload; want 0: %v %v", failed+kr.failed, errs, kr.errs)
			}
			if s := c.snapshot(); s.CrashesInWindow != 0 {
				t.Errorf("a reload counted %d crashes; want 0", s.CrashesInWindow)
			}
		})
	}
}

// A reload whose new worker cannot become ready stops, and the old workers
// keep serving.
func TestFailedReloadKeepsOldWorkers(t *testing.T) {
	env, setFault := faultFile(t)
	c := startCluster(t, env, 2, "--workers", "2", "--start-timeout", "1s")
	before := c.readyPIDs()
	setFault("slow")
	if status := adminPost(t, c.admin, "/reload", "", "", "X-Hybrid-Admin", "1"); status != http.StatusAccepted {
		t.Fatalf("POST /reload = %d; want 202", status)
	}
	c.waitLog("rolling reload stopped", 10*time.Second)
	c.waitFor(5*time.Second, "the reload to end with 2 workers", func() bool {
		s := c.snapshot()
		return !s.Reloading && len(s.Workers) == 2
	})
	s := c.snapshot()
	if s.WorkersReady != 2 {
		t.Errorf("after a failed reload: %+v; want 2 ready", s)
	}
	for _, w := range s.Workers {
		if !before[w.PID] {
			t.Errorf("worker %d (pid %d) is not one of the old workers %v", w.ID, w.PID, before)
		}
	}
	if status, err := getJSON(freshClient(), "http://"+c.addr+"/health", nil); err != nil || status != 200 {
		t.Errorf("GET /health after a failed reload = %d %v", status, err)
	}
}

// 6. SIGKILL to the primary leaves no worker alive 2 s later.
func TestNoOrphansWhenPrimaryIsKilled(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2")
	pids := c.readyPIDs()
	killed := time.Now()
	c.signal(syscall.SIGKILL)
	alive := func(pid int) bool {
		// Gone from /proc, or a zombie waiting for init to reap it, is dead.
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err == nil && !strings.Contains(string(stat), ") Z ")
	}
	for time.Since(killed) < 2*time.Second {
		n := 0
		for pid := range pids {
			if alive(pid) {
				n++
			}
		}
		if n == 0 {
			t.Logf("all workers gone %v after the primary's SIGKILL", time.Since(killed).Round(time.Millisecond))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for pid := range pids {
		if alive(pid) {
			t.Errorf("worker %d still alive 2s after its primary was killed", pid)
		}
	}
}

// 7. A port in use: the primary exits non-zero and names the address.
func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	cmd := exec.Command(binPath, "serve", "--addr", addr, "--admin-addr", "off")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() == 0 {
		t.Fatalf("hybrid serve on a used port: %v; want a non-zero exit", err)
	}
	if !strings.Contains(string(out), addr) || !strings.Contains(string(out), "address already in use") {
		t.Errorf("output does not name the address %s and the cause:\n%s", addr, out)
	}
	if n := strings.Count(string(out), "address already in use"); n != 1 {
		t.Errorf("the bind error is reported %d times; want once:\n%s", n, out)
	}
}

// Bad flags and bad environment values are one clear line and exit code 2.
func TestBadConfiguration(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{[]string{"--listen-mode", "magic"}, "", `listen mode "magic"`},
		{nil, "HYBRID_ACCEPT_BALANCE=fair", `accept balance "fair"`},
		{[]string{"--max-body", "lots"}, "", `size "lots"`},
		{nil, "HYBRID_WORKERS=abc", `invalid HYBRID_WORKERS="abc"`},
		{[]string{"--log-format", "xml"}, "", `log format "xml"`},
		{[]string{"--queue-wait", "30s"}, "", `queue wait 30s: want > 0 and below the task timeout (30s)`},
		{[]string{"--task-timeout", "5s"}, "HYBRID_QUEUE_WAIT=6s", `queue wait 6s`},
		{[]string{"--pool-queue", "0"}, "", `pool queue: want ≥ 1`},
		{[]string{"--drain-grace", "-1s"}, "", `timeouts must be positive`},
	} {
		cmd := exec.Command(binPath, append([]string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "off"}, tc.args...)...)
		cmd.Env = append(os.Environ(), tc.env)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("hybrid serve %v %s: exit %d, output %q; want exit 2 and %q", tc.args, tc.env, code, out, tc.want)
		}
	}
}

// Every error is the one JSON shape with the right status.
func TestErrorShape(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--max-body", "1KiB")
	for _, tc := range []struct {
		method, path string
		body         string
		status       int
		code         string
	}{
		{"GET", "/nope", "", 404, "not_found"},
		{"POST", "/health", "", 405, "method_not_allowed"},
		{"POST", "/health", strings.Repeat("x", 2048), 413, "body_too_large"},
		{"GET", "/_test/panic", "", 500, "internal"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+c.addr+tc.path, strings.NewReader(tc.body))
		resp, err := freshClient().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf(`{"error":{"code":%q,"message":`, tc.code)
		if resp.StatusCode != tc.status || !strings.HasPrefix(string(body), want) ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s = %d %s %q; want %d and %s…", tc.method, tc.path, resp.StatusCode,
				resp.Header.Get("Content-Type"), body, tc.status, want)
		}
	}
	// The panic did not kill the worker.
	if s := c.snapshot(); s.Forks != 1 || s.WorkersReady != 1 {
		t.Errorf("after a handler panic: %+v; want the same single worker", s)
	}
}
