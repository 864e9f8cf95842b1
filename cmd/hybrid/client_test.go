package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// runHybrid runs the binary with args and env (added to the test's) and
// returns its stdout, stderr and exit code.
func runHybrid(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	// A race-built client sleeps 1 s at exit by default: not for every call.
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("hybrid %q: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

func TestWriteStatus(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	conns := int32(7)
	s := procpool.Snapshot{
		PrimaryPID: 100, Addr: "[::]:8080", ListenMode: "shared", Circuit: "open", CircuitReason: "6 crashes",
		WorkersWanted: 2, WorkersReady: 1, Reloading: true,
		Workers: []procpool.WorkerInfo{
			{ID: 0, PID: 101, State: "ready", Restarts: 2, StartedAt: start, RSS: 23 << 20, Requests: 1234, InFlight: 3, Conns: &conns},
			{ID: 1, PID: 102, State: "starting", StartedAt: start.Add(3*time.Hour + 59*time.Minute)},
		},
	}
	now := start.Add(4*time.Hour + 5*time.Second)
	prev := &statusSample{at: now.Add(-2 * time.Second), requests: map[int]uint64{101: 1000}}
	metrics := []byte(`# TYPE hybrid_tasks_running gauge
hybrid_tasks_running{pool="pool",worker="0"} 1
hybrid_tasks_running{pool="isolate",worker="0"} 2
hybrid_tasks_capacity{pool="pool",worker="0"} 2
hybrid_tasks_capacity{pool="isolate",worker="0"} 4
hybrid_tasks_queued{pool="pool",worker="0"} 5
hybrid_tasks_queued{pool="isolate",worker="0"} 0
hybrid_tasks_predicted_wait_seconds{pool="pool",worker="0"} 0.0125
hybrid_tasks_predicted_wait_seconds{pool="isolate",worker="0"} 0
`)
	var b strings.Builder
	if err := writeStatus(&b, s, now, prev, parseTasks(metrics)); err != nil {
		t.Fatal(err)
	}
	want := `primary 100  addr [::]:8080  listen shared  workers 1/2 ready  circuit open (6 crashes)  reloading
id  pid  state     uptime  restarts  rss      req/s  in flight  conns  pool run/cap  queued  wait  isolate run/cap  queued  wait
0   101  ready     4h0m    2         23.0MiB  117.0  3          7      1/2           5       13ms  2/4              0       0s
1   102  starting  1m5s    0         0KiB     -      0          -      -             -       -     -                -       -
`
	if got := b.String(); got != want {
		t.Errorf("writeStatus =\n%s\nwant\n%s", got, want)
	}
}

func TestFormatUptime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "-", 0: "0s", 45 * time.Second: "45s", 12*time.Minute + 3*time.Second: "12m3s",
		5*time.Hour + 12*time.Minute: "5h12m", 76 * time.Hour: "3d4h",
	} {
		if got := formatUptime(d); got != want {
			t.Errorf("formatUptime(%v) = %q; want %q", d, got, want)
		}
	}
}

// hybrid status, status --json, reload and version through the real
// binary, finding the primary by --admin-addr and by HYBRID_ADMIN_ADDR.
func TestClientCommands(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2")
	s := c.snapshot()
	out, errOut, code := runHybrid(t, []string{"HYBRID_ADMIN_ADDR=" + c.admin}, "status")
	if code != 0 || !strings.HasPrefix(out, "primary "+strconv.Itoa(s.PrimaryPID)) || strings.Count(out, "  ready  ") != 2 || errOut != "" {
		t.Errorf("hybrid status: exit %d, stdout:\n%s\nstderr %q; want 0 and a table of 2 ready workers", code, out, errOut)
	}
	for _, w := range s.Workers {
		if !strings.Contains(out, " "+strconv.Itoa(w.PID)+" ") {
			t.Errorf("hybrid status lacks worker pid %d:\n%s", w.PID, out)
		}
	}
	out, _, code = runHybrid(t, nil, "status", "--json", "--admin-addr", c.admin)
	var js procpool.Snapshot
	if err := json.Unmarshal([]byte(out), &js); code != 0 || err != nil || js.PrimaryPID != s.PrimaryPID {
		t.Errorf("hybrid status --json: exit %d, %v, %q; want the snapshot", code, err, out)
	}
	out, errOut, code = runHybrid(t, nil, "reload", "--admin-addr", c.admin)
	if code != 0 || errOut != "" || !strings.HasPrefix(out, "reloading") {
		t.Errorf("hybrid reload: exit %d, %q, %q; want 0", code, out, errOut)
	}
	c.waitLog("rolling reload started", 5*time.Second)

	out, _, code = runHybrid(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "hybrid ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("hybrid version: exit %d, %q; want the version and %s", code, out, runtime.Version())
	}
}

// A reload asked while one runs gets 409, and hybrid reload one line.
func TestClientReloadBusy(t *testing.T) {
	env, setFault := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--start-timeout", "10s")
	setFault("slow") // the reload's new worker never becomes ready: the reload lasts 10 s
	if _, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("first hybrid reload: exit %d, %q; want 0", code, errOut)
	}
	out, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", c.admin)
	if code != 1 || out != "" || errOut != "hybrid: reload refused: a reload is running\n" {
		t.Errorf("second hybrid reload: exit %d, stdout %q, stderr %q; want 1 and one line", code, out, errOut)
	}
}

// With no primary at the address, one line says so, for TCP and unix.
func TestClientNoPrimary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	sock := "unix:" + filepath.Join(t.TempDir(), "none.sock")
	for _, a := range []string{addr, sock} {
		for _, cmd := range []string{"status", "reload", "upgrade"} {
			_, errOut, code := runHybrid(t, nil, cmd, "--admin-addr", a)
			want := "hybrid: no primary at " + a + " (is hybrid serve running? set --admin-addr)\n"
			if code != 1 || errOut != want {
				t.Errorf("hybrid %s --admin-addr %s: exit %d, %q; want 1, %q", cmd, a, code, errOut, want)
			}
		}
	}
	if _, errOut, code := runHybrid(t, nil, "scale", "--admin-addr", addr); code != 2 || !strings.Contains(errOut, "want 1 argument") {
		t.Errorf("hybrid scale without N: exit %d, %q; want 2, a usage line", code, errOut)
	}
	if _, errOut, code := runHybrid(t, nil, "scale", "zero", "--admin-addr", addr); code != 1 || !strings.Contains(errOut, "want a number of workers") {
		t.Errorf("hybrid scale zero: exit %d, %q; want 1", code, errOut)
	}
}

// hybrid scale N sets the worker count, and hybrid pool N the pool size.
func TestClientScale(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1")
	if out, errOut, code := runHybrid(t, nil, "scale", "2", "--admin-addr", c.admin); code != 0 || out != "scaling to 2 workers\n" {
		t.Fatalf("hybrid scale 2: exit %d, %q, %q; want 0", code, out, errOut)
	}
	c.waitFor(15*time.Second, "2 workers ready", func() bool { return len(c.readyPIDs()) == 2 })
	if out, errOut, code := runHybrid(t, nil, "pool", "3", "--admin-addr", c.admin); code != 0 || c.snapshot().PoolSize != 3 {
		t.Errorf("hybrid pool 3: exit %d, %q, %q, pool size %d; want 0, 3", code, out, errOut, c.snapshot().PoolSize)
	}
	// Out of range: one line in the CLI's words, with the range.
	want := fmt.Sprintf("hybrid: scale: 100000: want 1 to %d workers (workers_max)\n", c.snapshot().WorkersMax)
	if out, errOut, code := runHybrid(t, nil, "scale", "100000", "--admin-addr", c.admin); code != 1 || errOut != want || out != "" {
		t.Errorf("hybrid scale 100000: exit %d, %q, %q; want 1, %q", code, out, errOut, want)
	}
	want = "hybrid: pool: \"0\": want a task-pool size per worker, 1 to 4096 (a reload returns to --pool-size)\n"
	if out, errOut, code := runHybrid(t, nil, "pool", "0", "--admin-addr", c.admin); code != 1 || errOut != want || out != "" {
		t.Errorf("hybrid pool 0: exit %d, %q, %q; want 1, %q", code, out, errOut, want)
	}
	if s := c.snapshot(); s.WorkersWanted != 2 || s.PoolSize != 3 {
		t.Errorf("after the refusals: %d workers wanted, pool size %d; want 2, 3", s.WorkersWanted, s.PoolSize)
	}
	// A token no request could carry is a usage error, not a 401.
	if _, errOut, code := runHybrid(t, []string{"HYBRID_ADMIN_TOKEN= tok en "}, "status", "--admin-addr", c.admin); code != 2 || !strings.Contains(errOut, "whitespace") {
		t.Errorf("hybrid status with the token \" tok en \": exit %d, %q; want 2 and why", code, errOut)
	}
}

// hybrid status --watch prints the table again every --interval, with req/s
// from the last look and the pools' figures from /metrics, until
// interrupted; then it exits 0.
func TestClientStatusWatch(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2")
	l := startLoad("http://"+c.addr+"/health", []*http.Client{keptAlive(), keptAlive()})
	defer l.stop()
	cmd := exec.Command(binPath, "status", "--watch", "--interval", "300ms", "--admin-addr", c.admin)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("hybrid status --watch after an interrupt: %v; want exit 0", err)
	}
	tables := strings.Count(out.String(), "req/s")
	if tables < 3 {
		t.Errorf("hybrid status --watch printed %d tables in 2.5 s at a 300 ms interval:\n%s", tables, out.String())
	}
	// Under load the workers' req/s is a number, and the pool columns are
	// filled (run/cap), not "-".
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := strings.Fields(lines[len(lines)-1])
	if len(last) < 15 || last[6] == "-" || !strings.Contains(last[9], "/") || !strings.Contains(last[12], "/") {
		t.Errorf("last row %q: want req/s and the pool and isolate run/cap", lines[len(lines)-1])
	}
}

// A build with VCS stamping (go build -buildvcs=true, in the repository;
// GOFLAGS may say -buildvcs=false, which the flag overrides) shows its
// build, the revision cut to 12 hex digits and +dirty for a changed tree,
// in hybrid version, and /cluster shows the same for the primary and every
// worker.
func TestVersionShowsTheBuild(t *testing.T) {
	rev, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("SKIPPED LOUDLY: not in a git work tree, so no build to stamp: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "hybrid")
	args := append([]string{"build", "-buildvcs=true", "-tags", "testhooks", "-o", bin}, buildFlags...)
	build := exec.Command("go", append(args, ".")...)
	cgo := "CGO_ENABLED=0"
	if len(buildFlags) > 0 {
		cgo = "CGO_ENABLED=1"
	}
	build.Env = append(os.Environ(), cgo)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=true: %v\n%s", err, out)
	}
	os.Chmod(filepath.Dir(bin), 0o755)
	out, err := exec.Command(bin, "version").Output()
	m := regexp.MustCompile(` build ([0-9a-f]{12})(\+dirty)? `).FindStringSubmatch(string(out))
	if err != nil || m == nil {
		t.Fatalf("hybrid version: %q, %v; want \"build <12 hex digits>[+dirty]\"", out, err)
	}
	// The revision is one of this repository's commits (HEAD may have
	// moved on since the build, as others commit).
	if err := exec.Command("git", "cat-file", "-e", m[1]+"^{commit}").Run(); err != nil {
		t.Errorf("hybrid version says build %s, which is no commit here (HEAD %.12s): %v", m[1], rev, err)
	}
	want := m[1] + m[2]
	c := startClusterCmd(t, serveCmd(bin, "--workers", "2"), nil, 2)
	s := c.snapshot()
	if s.Build != want {
		t.Errorf("/cluster build %q; want %q, as hybrid version says", s.Build, want)
	}
	for _, w := range s.Workers {
		if w.Build != want {
			t.Errorf("/cluster worker %d build %q; want %q", w.ID, w.Build, want)
		}
	}
}

// Whatever answers at the admin address (a process squatting the port
// while hybrid is down) cannot write control characters or lines of its
// own to the operator's terminal: the client quotes an error text that
// holds any.
func TestClientQuotesAdminErrorText(t *testing.T) {
	evil := "reload refused\x1b[2J\x1b[31m\nhybrid: upgrade succeeded\u202e"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "busy", "message": evil}})
	}))
	defer srv.Close()
	_, errOut, code := runHybrid(t, nil, "reload", "--admin-addr", strings.TrimPrefix(srv.URL, "http://"))
	if code != 1 || strings.Count(errOut, "\n") != 1 || strings.ContainsFunc(errOut[:len(errOut)-1], func(r rune) bool { return r < ' ' || r == 0x7f || r == '\u202e' }) {
		t.Errorf("hybrid reload against an admin that answers %q: exit %d, stderr %q; want 1 and one line without control characters", evil, code, errOut)
	}
	if want := `"reload refused\x1b[2J\x1b[31m\nhybrid: `; !strings.Contains(errOut, want) {
		t.Errorf("stderr %q; want the text quoted, %s…", errOut, want)
	}
}
