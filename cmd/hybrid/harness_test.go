package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
)

// The integration tests drive the real binary as a user would: they build
// it once, start `hybrid serve` on 127.0.0.1 port 0, talk to it over real
// sockets, send it real signals, and kill every process they started by pid.

var (
	buildFlags []string // -race when the tests run with -race
	binPath    string
)

func init() {
	if raceEnabled {
		buildFlags = append(buildFlags, "-race")
	}
}

// testBinEnv hands the built binary to the fuzzing engine's worker
// processes, which run TestMain again: they must not rebuild it.
const testBinEnv = "HYBRID_TEST_BINARY"

// testHooksVar is the fault switch of a test build (testhooks.go, which the
// test package itself is not built with).
const testHooksVar = "HYBRID_TEST_HOOKS"

func TestMain(m *testing.M) {
	if bin := os.Getenv(testBinEnv); bin != "" {
		binPath = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "hybrid-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Installed binaries are world-executable (/usr/local/bin): isolated
	// children exec it as their own unprivileged user.
	os.Chmod(dir, 0o755)
	binPath = filepath.Join(dir, "hybrid")
	// -tags testhooks: the fault switch and test routes (testhooks.go),
	// which the release binary does not have.
	args := append([]string{"build", "-tags", "testhooks", "-o", binPath}, buildFlags...)
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	// The binary users get is static (CGO_ENABLED=0); only the race detector
	// needs cgo.
	cgo := "CGO_ENABLED=0"
	if len(buildFlags) > 0 {
		cgo = "CGO_ENABLED=1"
	}
	build.Env = append(os.Environ(), cgo)
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building hybrid:", err)
		os.Exit(1)
	}
	os.Setenv(testBinEnv, binPath)
	code := m.Run()
	os.RemoveAll(dir)
	if secondDir != "" {
		os.RemoveAll(secondDir)
	}
	os.Exit(code)
}

// logLines collects a process's JSON log lines and lets a test wait for one.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	raw   bytes.Buffer
	added chan struct{}
}

func (l *logLines) consume(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var m map[string]any
		_ = json.Unmarshal(line, &m) // non-JSON lines (goroutine dumps) are kept raw only
		l.mu.Lock()
		l.raw.Write(line)
		l.raw.WriteByte('\n')
		if m != nil {
			l.lines = append(l.lines, m)
		}
		l.mu.Unlock()
		select {
		case l.added <- struct{}{}:
		default:
		}
	}
}

// find returns the log lines whose msg contains substr.
func (l *logLines) find(substr string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if msg, _ := m["msg"].(string); strings.Contains(msg, substr) {
			out = append(out, m)
		}
	}
	return out
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

type cluster struct {
	t     *testing.T
	cmd   *exec.Cmd
	logs  *logLines
	addr  string // the serving address, 127.0.0.1:port
	admin string
	exit  chan struct{}
	state *os.ProcessState
}

// startCluster runs hybrid serve with args (after the harness's own) and
// waits until the admin endpoint answers and wantReady workers are ready.
func startCluster(t *testing.T, env []string, wantReady int, args ...string) *cluster {
	t.Helper()
	return startClusterCmd(t, serveCmd(binPath, args...), env, wantReady)
}

// serveCmd is "bin serve" with the harness's own flags (ephemeral
// addresses, JSON logs), then args.
func serveCmd(bin string, args ...string) *exec.Cmd {
	full := append([]string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	return exec.Command(bin, full...)
}

// startClusterCmd is startCluster for a command the test prepared itself
// (another binary, descriptors to inherit, another user).
func startClusterCmd(t *testing.T, cmd *exec.Cmd, env []string, wantReady int) *cluster {
	t.Helper()
	c := launch(t, cmd, env)
	t.Cleanup(c.cleanup)
	c.waitLog("primary starting", 10*time.Second)
	c.addr = c.logs.find("primary starting")[0]["addr"].(string)
	c.waitLog("admin endpoint listening", 10*time.Second)
	c.admin = c.logs.find("admin endpoint listening")[0]["admin_addr"].(string)
	if wantReady > 0 {
		c.waitFor(15*time.Second, fmt.Sprintf("%d workers ready", wantReady), func() bool {
			return len(c.readyPIDs()) >= wantReady
		})
	}
	return c
}

// launch starts cmd (hybrid serve, or a wrapper that runs it) and collects
// its JSON log; the caller registers the cleanup.
func launch(t *testing.T, cmd *exec.Cmd, env []string) *cluster {
	t.Helper()
	// A race-built process sleeps 1s at exit by default: not for every
	// isolated child.
	// A $TMPDIR of the cluster's own, removed with the test: a primary or
	// worker the cleanup kills by SIGKILL leaves its temporary directories
	// (the isolator's, the cache's) there, not in /tmp. Mode 1777, as /tmp:
	// isolated children run as another user, in a directory inside it, and
	// a test may run hybrid itself as another user.
	tmp, err := os.MkdirTemp("", "hybrid-run-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(tmp, 0o1777)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0", "TMPDIR="+tmp), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, cmd: cmd, logs: &logLines{added: make(chan struct{}, 1)}, exit: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		c.logs.consume(stderr)
		cmd.Wait()
		c.state = cmd.ProcessState
		close(c.exit)
	}()
	return c
}

// cleanup kills the primary and every worker it ever started, by pid.
func (c *cluster) cleanup() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	for _, m := range c.logs.find("worker starting") {
		if pid, ok := m["worker_pid"].(float64); ok {
			syscall.Kill(int(pid), syscall.SIGKILL)
		}
	}
	select {
	case <-c.exit:
	case <-time.After(10 * time.Second):
		c.t.Errorf("primary did not exit after SIGKILL")
	}
	if c.t.Failed() {
		c.t.Logf("hybrid log:\n%s", c.logs.String())
	}
}

func (c *cluster) waitLog(substr string, timeout time.Duration) map[string]any {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		if found := c.logs.find(substr); len(found) > 0 {
			return found[len(found)-1]
		}
		select {
		case <-c.logs.added:
		case <-c.exit:
			if found := c.logs.find(substr); len(found) > 0 {
				return found[len(found)-1]
			}
			c.t.Fatalf("hybrid exited (%v) before logging %q", c.state, substr)
		case <-deadline:
			c.t.Fatalf("no log line %q within %v", substr, timeout)
		}
	}
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func (c *cluster) waitFor(timeout time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s; cluster: %+v", timeout, what, c.snapshotOrNil())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) signal(sig syscall.Signal) {
	c.t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to primary: %v", sig, err)
	}
}

// wait waits for the primary to exit and returns its exit code.
func (c *cluster) wait(timeout time.Duration) int {
	c.t.Helper()
	select {
	case <-c.exit:
		return c.state.ExitCode()
	case <-time.After(timeout):
		c.t.Fatalf("primary still running after %v", timeout)
		return -1
	}
}

func (c *cluster) alive() bool {
	select {
	case <-c.exit:
		return false
	default:
		return true
	}
}

var adminClient = &http.Client{Timeout: 5 * time.Second}

func (c *cluster) snapshotOrNil() *procpool.Snapshot {
	resp, err := adminClient.Get("http://" + c.admin + "/cluster")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var s procpool.Snapshot
	if json.NewDecoder(resp.Body).Decode(&s) != nil {
		return nil
	}
	return &s
}

func (c *cluster) snapshot() procpool.Snapshot {
	c.t.Helper()
	s := c.snapshotOrNil()
	if s == nil {
		c.t.Fatalf("GET /cluster failed")
	}
	return *s
}

// readyPIDs returns the pids of the ready workers.
func (c *cluster) readyPIDs() map[int]bool {
	pids := map[int]bool{}
	if s := c.snapshotOrNil(); s != nil {
		for _, w := range s.Workers {
			if w.State == procpool.StateReady {
				pids[w.PID] = true
			}
		}
	}
	return pids
}

// freshClient opens a new connection for every request, so that every
// request goes through the listening socket's accept queue.
// freshClient is for the harness's own polling (/health, /cluster), which
// must see whichever worker answers now; the load and drain tests use
// kept-alive clients, as users do (startLoad, post).
func freshClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

type health struct {
	Status string `json:"status"`
	PID    int    `json:"pid"`
	Worker int    `json:"worker"`
}

func getJSON(client *http.Client, url string, v any) (int, error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %q: %w", body, err)
		}
	}
	return resp.StatusCode, nil
}

// load sends GET url in a loop, one goroutine per client, until stop, and
// counts every outcome: an error is never dropped from the figures.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       map[string]int
	done       sync.WaitGroup
	cancel     context.CancelFunc
}

func startLoad(url string, clients []*http.Client) *load {
	return startLoadFunc(clients, func(client *http.Client) error {
		status, err := getJSON(client, url, nil)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("status %d", status)
		}
		return err
	})
}

// startLoadFunc runs req in a loop, one goroutine per client, until stop,
// and counts every outcome (nil: ok).
func startLoadFunc(clients []*http.Client, req func(*http.Client) error) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, errs: map[string]int{}}
	for _, client := range clients {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			for ctx.Err() == nil {
				if err := req(client); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					l.errs[err.Error()]++
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *load) stop() (ok, failed int64, errs []string) {
	l.cancel()
	l.done.Wait()
	for e, n := range l.errs {
		errs = append(errs, fmt.Sprintf("%dx %s", n, e))
	}
	return l.ok.Load(), l.failed.Load(), errs
}
