package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Server is a `hybrid serve` the bench started and will stop.
type Server struct {
	// URL is the serving address, http://127.0.0.1:port.
	URL string
	// PID is the primary's; its process tree is what Cost measures.
	PID  int
	cmd  *exec.Cmd
	logs *logTail
	done chan struct{} // closed when the process has been waited for
	err  error         // Wait's result, valid after done
}

// StartServer runs exe serve on a free loopback port with args after the
// bench's own (`--addr`, `--admin-addr`, `--log-format json`, `--cache-size
// 0`), and returns
// once the admin endpoint says every worker is ready.
func StartServer(ctx context.Context, exe string, args []string) (*Server, error) {
	// No result cache: the bench measures the work, and it sends the same
	// request again and again (--serve-args "--cache-size 64MiB" measures
	// hits).
	full := append([]string{"serve", "--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--log-format", "json",
		"--cache-size", "0"}, args...)
	cmd := exec.Command(exe, full...)
	// The cell is exactly its flags: no HYBRID_* setting leaks in from the
	// bench's own environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HYBRID_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The server must not outlive the bench, even one killed by SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", exe, err)
	}
	s := &Server{PID: cmd.Process.Pid, cmd: cmd, logs: &logTail{}, done: make(chan struct{})}
	addrs := make(chan [2]string, 1)
	go s.logs.consume(stderr, addrs)
	go func() { s.err = cmd.Wait(); close(s.done) }()

	fail := func(err error) (*Server, error) {
		s.Stop(context.Background())
		return nil, fmt.Errorf("bench: %s %s: %w\n%s", exe, strings.Join(full, " "), err, s.logs)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var addr [2]string
	select {
	case addr = <-addrs:
	case <-s.done:
		return fail(fmt.Errorf("exited before listening: %v", s.err))
	case <-ctx.Done():
		return fail(errors.New("no address logged within 30s"))
	}
	s.URL = "http://" + addr[0]
	for {
		code, _, err := fasthttp.GetTimeout(nil, "http://"+addr[1]+"/health", time.Second)
		if err == nil && code == 200 {
			return s, nil
		}
		select {
		case <-s.done:
			return fail(fmt.Errorf("exited before ready: %v", s.err))
		case <-ctx.Done():
			return fail(errors.New("workers not ready within 30s"))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM (the graceful drain), waits up to 10 s or until ctx
// ends, then SIGKILLs the primary (its workers die with it: parent-death
// signal). Safe to call more than once.
func (s *Server) Stop(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	s.cmd.Process.Kill()
	<-s.done
	return fmt.Errorf("bench: server %d did not drain within 10s; killed", s.PID)
}

// logTail keeps the last lines of the server's log, for error messages,
// and reports the serving and admin addresses once both are logged.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) consume(r io.Reader, addrs chan<- [2]string) {
	var addr, admin string
	sent := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		l.mu.Lock()
		l.lines = append(l.lines, line)
		if len(l.lines) > 40 {
			l.lines = l.lines[len(l.lines)-40:]
		}
		l.mu.Unlock()
		if sent {
			continue
		}
		var m struct {
			Msg       string `json:"msg"`
			Addr      string `json:"addr"`
			AdminAddr string `json:"admin_addr"`
		}
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		switch m.Msg {
		case "primary starting":
			addr = m.Addr
		case "admin endpoint listening":
			admin = m.AdminAddr
		}
		if addr != "" && admin != "" {
			addrs <- [2]string{addr, admin}
			sent = true
		}
	}
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
