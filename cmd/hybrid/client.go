package main

// The client subcommands (status, reload, upgrade, scale, pool) speak to a running
// primary's admin endpoint, found as hybrid serve would listen on it:
// --admin-addr or HYBRID_ADMIN_ADDR, with serve's default; "unix:/path" for
// a unix socket. They send the admin header always (server.AdminHeader) and
// the token of --admin-token or HYBRID_ADMIN_TOKEN when set. They exit 0 on
// success, and 1 with one line on stderr on failure (2 for a usage error).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
)

// defaultAdminAddr is hybrid serve's --admin-addr default.
const defaultAdminAddr = "127.0.0.1:8081"

// primaryClient calls a running primary's admin endpoint at addr.
type primaryClient struct {
	addr  string // as given: host:port or unix:/path
	token string
	base  string // the URL prefix
	http  *http.Client
}

// clientFlagSet returns the flag set of client command name, with the
// flags that find the primary.
func clientFlagSet(name string, out io.Writer) (*flag.FlagSet, *primaryClient) {
	c := &primaryClient{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.addr, "admin-addr", defaultAdminAddr, "the primary's admin endpoint: host:port or unix:/path")
	fs.StringVar(&c.token, "admin-token", "", "the admin token, if the primary has one (prefer HYBRID_ADMIN_TOKEN: the command line is visible to every user)")
	return fs, c
}

// connect prepares c to call its address, waiting at most timeout for an
// answer (0: no limit). Requests never go through a proxy: the environment's
// HTTP_PROXY must not see the token.
func (c *primaryClient) connect(timeout time.Duration) {
	tr := &http.Transport{DisableKeepAlives: true}
	c.base = "http://" + c.addr
	if path, ok := strings.CutPrefix(c.addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		c.base = "http://localhost"
	}
	c.http = &http.Client{Transport: tr, Timeout: timeout}
}

// call sends method path with body (JSON, or none) and returns the body of
// a 2xx answer; any other answer, or no answer, is an error of one line.
func (c *primaryClient) call(ctx context.Context, method, path, body string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set(server.AdminHeader, "1")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no primary at %s (is hybrid serve running? set --admin-addr)", c.addr)
		}
		return nil, fmt.Errorf("admin endpoint at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("admin endpoint at %s: %w", c.addr, err)
	}
	if resp.StatusCode/100 == 2 {
		return b, nil
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
		return nil, fmt.Errorf("admin endpoint at %s: %s", c.addr, printable(resp.Status))
	}
	switch e.Error.Code {
	case "unauthorized":
		if c.token == "" {
			return nil, fmt.Errorf("the primary at %s wants its admin token: set HYBRID_ADMIN_TOKEN or --admin-token", c.addr)
		}
		return nil, fmt.Errorf("the primary at %s refused the admin token", c.addr)
	}
	return nil, &adminError{code: e.Error.Code, msg: e.Error.Message}
}

// adminError is the admin endpoint's refusal: its code and message.
type adminError struct{ code, msg string }

func (e *adminError) Error() string { return printable(e.msg) }

// printable is s, the admin endpoint's text, as the terminal may show it:
// quoted (server.Quote) when it holds a control character, a format one
// (a bidi override) or is not UTF-8, so that whatever answers at the admin address cannot move the
// cursor, recolour the terminal or add lines to an operator's output.
func printable(s string) string {
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) }) {
		return server.Quote(s)
	}
	return s
}

// isBadRequest reports whether err is the admin's 400 bad_request: for
// /scale and /pool, a number out of range.
func isBadRequest(err error) bool {
	var e *adminError
	return errors.As(err, &e) && e.code == server.CodeBadRequest
}

// runClient runs client command name: it parses args (flags, and
// positional arguments), then runs do, which calls the admin and prints
// the outcome; do's error is the one line of a failure.
func runClient(name string, args []string, positional int, timeout time.Duration,
	do func(ctx context.Context, c *primaryClient, pos []string) error) int {
	fs, c := clientFlagSet(name, os.Stderr)
	pos, err := parseFlagsArgs(fs, args)
	if err == nil {
		err = server.CheckAdminToken(c.token)
	}
	if err == nil && len(pos) != positional {
		err = fmt.Errorf("want %d argument(s), got %d", positional, len(pos))
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "hybrid %s: %v\n", name, err)
		return 2
	}
	c.connect(timeout)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := do(ctx, c, pos); err != nil {
		fmt.Fprintf(os.Stderr, "hybrid: %v\n", err)
		return 1
	}
	return 0
}

func runReload(args []string) int {
	return runClient("reload", args, 0, 10*time.Second, func(ctx context.Context, c *primaryClient, _ []string) error {
		if _, err := c.call(ctx, http.MethodPost, "/reload", ""); err != nil {
			return err
		}
		fmt.Println("reloading: the workers roll one at a time (hybrid status shows them)")
		return nil
	})
}

// runUpgrade waits for the upgrade's end, however long the new primary
// takes: the primary bounds it (--start-timeout).
func runUpgrade(args []string) int {
	return runClient("upgrade", args, 0, 0, func(ctx context.Context, c *primaryClient, _ []string) error {
		if _, err := c.call(ctx, http.MethodPost, "/upgrade", ""); err != nil {
			return err
		}
		fmt.Println("upgraded: the new primary serves")
		return nil
	})
}

// runScale asks for N workers, 1 to the primary's workers_max, which a
// refusal names.
func runScale(args []string) int {
	return runClient("scale", args, 1, 10*time.Second, func(ctx context.Context, c *primaryClient, pos []string) error {
		n, err := strconv.Atoi(pos[0])
		if err != nil || n < 1 {
			return fmt.Errorf("scale: %s: want a number of workers, 1 to the primary's workers_max", server.Quote(pos[0]))
		}
		if _, err := c.call(ctx, http.MethodPost, "/scale", fmt.Sprintf(`{"workers":%d}`, n)); err != nil {
			if !isBadRequest(err) {
				return err
			}
			var s procpool.Snapshot
			body, cerr := c.call(ctx, http.MethodGet, "/cluster", "")
			if cerr != nil || json.Unmarshal(body, &s) != nil || s.WorkersMax < 1 {
				return fmt.Errorf("scale: %d: the primary refused it: %w", n, err)
			}
			return fmt.Errorf("scale: %d: want 1 to %d workers (workers_max)", n, s.WorkersMax)
		}
		fmt.Printf("scaling to %d workers\n", n)
		return nil
	})
}

// runPool sets every worker's task-pool size, 1 to procpool.MaxPoolSize,
// until the next reload, which returns to the flags' (--pool-size).
func runPool(args []string) int {
	return runClient("pool", args, 1, 10*time.Second, func(ctx context.Context, c *primaryClient, pos []string) error {
		n, err := strconv.Atoi(pos[0])
		if err != nil || n < 1 || n > procpool.MaxPoolSize {
			return fmt.Errorf("pool: %s: want a task-pool size per worker, 1 to %d (a reload returns to --pool-size)", server.Quote(pos[0]), procpool.MaxPoolSize)
		}
		if _, err := c.call(ctx, http.MethodPost, "/pool", fmt.Sprintf(`{"size":%d}`, n)); err != nil {
			return err
		}
		fmt.Printf("pool size %d on every worker, until the next reload\n", n)
		return nil
	})
}

func runStatus(args []string) int {
	var asJSON, watch bool
	var every time.Duration
	fs, c := clientFlagSet("status", os.Stderr)
	fs.BoolVar(&asJSON, "json", false, "print GET /cluster's JSON as it is")
	fs.BoolVar(&watch, "watch", false, "print the status again every --interval, until interrupted")
	fs.DurationVar(&every, "interval", 2*time.Second, "the period of --watch")
	pos, err := parseFlagsArgs(fs, args)
	if err == nil {
		err = server.CheckAdminToken(c.token)
	}
	if err == nil && len(pos) > 0 {
		err = fmt.Errorf("unexpected argument %q", pos[0])
	}
	if err == nil && every <= 0 {
		err = fmt.Errorf("interval %v: want > 0", every)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "hybrid status: %v\n", err)
		return 2
	}
	c.connect(10 * time.Second)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	clear := ""
	if fi, err := os.Stdout.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		clear = "\x1b[H\x1b[2J"
	}
	var prev *statusSample // the last look, for req/s
	for {
		var err error
		prev, err = printStatus(ctx, c, os.Stdout, asJSON, prev)
		if !watch {
			if err != nil {
				fmt.Fprintf(os.Stderr, "hybrid: %v\n", err)
				return 1
			}
			return 0
		}
		if err != nil && ctx.Err() == nil {
			fmt.Printf("hybrid: %v\n", err) // and keep watching: the primary may come back
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(every):
			fmt.Print(clear)
		}
	}
}

// statusSample is one look at the cluster, kept to compute req/s at the
// next.
type statusSample struct {
	at       time.Time
	requests map[int]uint64 // by worker pid
}

// printStatus writes the cluster's state to w: its JSON, or a table. The
// table's req/s is over the time since prev (a --watch's last look); the
// first look takes a second sample 1 s later.
func printStatus(ctx context.Context, c *primaryClient, w io.Writer, asJSON bool, prev *statusSample) (*statusSample, error) {
	body, err := c.call(ctx, http.MethodGet, "/cluster", "")
	if err != nil {
		return prev, err
	}
	if asJSON {
		_, err := w.Write(body)
		return prev, err
	}
	var s procpool.Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		return prev, fmt.Errorf("admin endpoint at %s: GET /cluster: %w", c.addr, err)
	}
	if prev == nil {
		prev = sampleOf(s, time.Now())
		select {
		case <-ctx.Done():
			return prev, nil
		case <-time.After(time.Second):
		}
		if body, err = c.call(ctx, http.MethodGet, "/cluster", ""); err != nil {
			return prev, err
		}
		s = procpool.Snapshot{}
		if err := json.Unmarshal(body, &s); err != nil {
			return prev, fmt.Errorf("admin endpoint at %s: GET /cluster: %w", c.addr, err)
		}
	}
	now := time.Now()
	// The pools' figures are in /metrics; an older primary has none.
	var tasks map[taskKey]float64
	if text, err := c.call(ctx, http.MethodGet, "/metrics", ""); err == nil {
		tasks = parseTasks(text)
	}
	return sampleOf(s, now), writeStatus(w, s, now, prev, tasks)
}

func sampleOf(s procpool.Snapshot, at time.Time) *statusSample {
	ss := &statusSample{at: at, requests: map[int]uint64{}}
	for _, wk := range s.Workers {
		ss.requests[wk.PID] = wk.Requests
	}
	return ss
}

// taskKey names one task-pool figure of /metrics: the metric (queued,
// running, capacity, predicted_wait_seconds), the pool and the worker slot.
type taskKey struct{ metric, pool, worker string }

// parseTasks reads the hybrid_tasks_* gauges of a /metrics text: lines of
// name{labels} value, as internal/promtext writes them.
func parseTasks(text []byte) map[taskKey]float64 {
	out := map[taskKey]float64{}
	for _, line := range strings.Split(string(text), "\n") {
		name, rest, ok := strings.Cut(line, "{")
		metric, isTask := strings.CutPrefix(name, "hybrid_tasks_")
		if !ok || !isTask {
			continue
		}
		labels, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		k := taskKey{metric: metric}
		for _, kv := range strings.Split(labels, ",") {
			key, val, _ := strings.Cut(kv, "=")
			val = strings.Trim(val, `"`)
			switch key {
			case "pool":
				k.pool = val
			case "worker":
				k.worker = val
			}
		}
		out[k] = v
	}
	return out
}

// writeStatus writes s as a table, one worker a row (pm2 ls): req/s since
// prev, and each pool's running/capacity, queued and predicted wait when
// tasks (from /metrics) has them.
func writeStatus(w io.Writer, s procpool.Snapshot, now time.Time, prev *statusSample, tasks map[taskKey]float64) error {
	circuit := s.Circuit
	if s.CircuitReason != "" && s.Circuit == "open" {
		circuit += " (" + s.CircuitReason + ")"
	}
	fmt.Fprintf(w, "primary %d", s.PrimaryPID)
	if s.Version != "" {
		fmt.Fprintf(w, " %s", s.Version)
	}
	fmt.Fprintf(w, "  addr %s  listen %s  workers %d/%d ready  circuit %s",
		s.Addr, s.ListenMode, s.WorkersReady, s.WorkersWanted, circuit)
	switch {
	case s.ShuttingDown:
		fmt.Fprint(w, "  shutting down")
	case s.Reloading:
		fmt.Fprint(w, "  reloading")
	case s.Upgrading:
		fmt.Fprint(w, "  upgrading")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "id\tpid\tstate\tuptime\trestarts\trss\treq/s\tin flight\tconns\tpool run/cap\tqueued\twait\tisolate run/cap\tqueued\twait")
	for _, wk := range s.Workers {
		conns := "-"
		if wk.Conns != nil {
			conns = strconv.Itoa(int(*wk.Conns))
		}
		rate := "-"
		if prev != nil {
			if before, ok := prev.requests[wk.PID]; ok && now.After(prev.at) && wk.Requests >= before {
				rate = strconv.FormatFloat(float64(wk.Requests-before)/now.Sub(prev.at).Seconds(), 'f', 1, 64)
			}
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s", wk.ID, wk.PID, wk.State,
			formatUptime(now.Sub(wk.StartedAt)), wk.Restarts, formatRSS(wk.RSS), rate, wk.InFlight, conns)
		for _, pool := range []string{"pool", "isolate"} {
			id := strconv.Itoa(wk.ID)
			get := func(m string) (float64, bool) { v, ok := tasks[taskKey{m, pool, id}]; return v, ok }
			running, ok1 := get("running")
			capacity, ok2 := get("capacity")
			queued, _ := get("queued")
			wait, _ := get("predicted_wait_seconds")
			if !ok1 || !ok2 || wk.State != procpool.StateReady {
				fmt.Fprint(tw, "\t-\t-\t-")
				continue
			}
			fmt.Fprintf(tw, "\t%.0f/%.0f\t%.0f\t%s", running, capacity, queued, time.Duration(wait*float64(time.Second)).Round(time.Millisecond))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// formatUptime is d in its two largest units: 45s, 12m3s, 5h12m, 3d4h.
func formatUptime(d time.Duration) string {
	switch s := int64(d.Round(time.Second) / time.Second); {
	case s < 0:
		return "-"
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s%3600/60)
	default:
		return fmt.Sprintf("%dd%dh", s/86400, s%86400/3600)
	}
}

// formatRSS is n bytes in MiB with one decimal (KiB below 1 MiB).
func formatRSS(n uint64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
}
