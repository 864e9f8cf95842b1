package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hybrid-server/hybrid/bench"
)

const benchUsage = `usage:
  hybrid bench [flags]                 measure workloads × modes × worker counts
  hybrid bench compare a.json b.json   print b's figures as ratios to a's

Each cell of the matrix starts a fresh "hybrid serve" on 127.0.0.1 (this
binary), warms it up, measures it, and stops it by its pid. --url measures a
running hybrid server instead; --target measures any HTTP server.

flags:
`

// benchConfig is what `hybrid bench` reads from its command line. Unlike
// serve's, these flags read no environment variables: a bench must not pick
// up a server's HYBRID_* settings, and the servers it starts get exactly
// the flags recorded in results.json (HYBRID_* is removed from their
// environment).
type benchConfig struct {
	matrix bench.Matrix
	report string
	flags  map[string]string
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func benchFlagSet() (*flag.FlagSet, *benchConfig, func() error) {
	c := &benchConfig{}
	m := &c.matrix
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var names []string
	for _, w := range bench.Workloads {
		names = append(names, w.Name)
	}
	workloads := fs.String("workloads", strings.Join(names, ","), "workloads to run, comma-separated: "+strings.Join(names, ", "))
	modes := fs.String("modes", strings.Join(bench.Modes, ","), "modes to run, comma-separated: inline, pool, isolate")
	defWorkers := "1"
	if n := runtime.GOMAXPROCS(0); n > 1 {
		defWorkers += "," + strconv.Itoa(n)
	}
	workers := fs.String("workers", defWorkers, "worker counts to run, comma-separated (a fresh server per cell)")
	conc := fs.Int("c", 0, "connections: closed loop, each sends its next request when the last answers; open loop, the most in flight (0: 4 per worker, or 8 with --url/--target)")
	fs.Float64Var(&m.Load.Rate, "rate", 0, "open loop: requests per second on a fixed schedule, latency from each intended send time (0: closed loop)")
	fs.DurationVar(&m.Load.Duration, "duration", 10*time.Second, "measured time per cell (0: until --requests)")
	fs.Int64Var(&m.Load.Requests, "requests", 0, "measured requests per cell (0: until --duration)")
	fs.DurationVar(&m.Load.Warmup, "warmup", 2*time.Second, "uncounted load before each cell's measurement")
	fs.BoolVar(&m.Load.NewConn, "new-conn", false, "open a new connection for every request (default: keep-alive)")
	fs.DurationVar(&m.Load.Timeout, "timeout", 30*time.Second, "one request's limit; past it the request counts as a timeout error")
	fs.StringVar(&m.URL, "url", "", "measure a running hybrid server at this base URL (it needs --allow-mode-override for --modes)")
	raw := &benchRaw{workloads: workloads, modes: modes, workers: workers, conc: conc}
	fs.Var(&raw.targets, "target", `measure any HTTP server: "[NAME=]METHOD URL [@BODYFILE] [c=N]"; repeatable`)
	fs.Var(&raw.headers, "H", `a header for every --target request, "Name: value"; repeatable. With "Expect: 100-continue" the client waits for the answer to the headers before it sends the body, as curl does`)
	raw.body = fs.String("body", "", "a file whose bytes are the body of every --target request that sends one (not GET or HEAD) and names no @BODYFILE")
	fs.IntVar(&m.ServerPID, "server-pid", 0, "with --url or --target: the server's root pid, to measure its process tree's CPU per request and peak RSS")
	raw.serveArgs = fs.String("serve-args", "", `more flags for every server the bench starts, e.g. "--pool-size 2 --isolate-reuse 10"`)
	fs.StringVar(&c.report, "report", "", "a directory to write results.json and report.html into")
	return fs, c, func() error { return c.finish(fs, raw) }
}

// benchRaw holds the flag values that finish checks and turns into the
// matrix once the flag set has parsed.
type benchRaw struct {
	workloads, modes, workers, body, serveArgs *string
	conc                                       *int
	targets, headers                           listFlag
}

// finish checks the parsed values and builds c.matrix: from --target, or
// from the workloads × modes × workers of the bench's own servers.
func (c *benchConfig) finish(fs *flag.FlagSet, raw *benchRaw) error {
	m := &c.matrix
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	c.flags = map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { c.flags[f.Name] = f.Value.String() })
	if given["c"] && *raw.conc < 1 {
		return fmt.Errorf("-c %d: want at least 1 connection", *raw.conc)
	}
	m.Load.Concurrency = *raw.conc
	if m.Load.Concurrency < 0 || m.Load.Rate < 0 || m.Load.Duration < 0 || m.Load.Requests < 0 || m.Load.Warmup < 0 || m.Load.Timeout <= 0 {
		return errors.New("-c, --rate, --duration, --requests, --warmup: want ≥ 0; --timeout: want > 0")
	}
	if m.Load.Duration == 0 && m.Load.Requests == 0 {
		return errors.New("--duration 0 needs --requests: a run must stop by itself")
	}
	if m.URL != "" && len(raw.targets) > 0 {
		return errors.New("--url and --target: choose one")
	}
	if len(raw.targets) > 0 {
		return c.finishTargets(given, raw)
	}
	if *raw.body != "" || len(raw.headers) > 0 {
		return errors.New("--body and -H: only with --target (workloads bring their own)")
	}
	return c.finishMatrix(given, raw)
}

// finishTargets builds the matrix of --target requests.
func (c *benchConfig) finishTargets(given map[string]bool, raw *benchRaw) error {
	for _, f := range []string{"workloads", "modes", "workers", "serve-args"} {
		if given[f] {
			return fmt.Errorf("--%s: not with --target (a target is one fixed request)", f)
		}
	}
	var bodyBytes []byte
	if *raw.body != "" {
		b, err := os.ReadFile(*raw.body)
		if err != nil {
			return fmt.Errorf("--body: %w", err)
		}
		bodyBytes = b
	}
	var hdr [][2]string
	for _, h := range raw.headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("-H %q: want \"Name: value\"", h)
		}
		hdr = append(hdr, [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	for i, spec := range raw.targets {
		nt, err := parseTargetSpec(spec, i, hdr, bodyBytes)
		if err != nil {
			return fmt.Errorf("--target: %w", err)
		}
		c.matrix.Targets = append(c.matrix.Targets, nt)
	}
	return nil
}

// finishMatrix builds the workloads × modes × workers matrix.
func (c *benchConfig) finishMatrix(given map[string]bool, raw *benchRaw) error {
	m := &c.matrix
	if m.ServerPID != 0 && m.URL == "" {
		return errors.New("--server-pid: only with --url or --target (the bench measures the servers it starts itself)")
	}
	if m.URL != "" {
		if given["workers"] || given["serve-args"] {
			return errors.New("--workers and --serve-args: not with --url (the bench does not start that server)")
		}
		if _, err := bench.ParseTarget("GET " + m.URL); err != nil {
			return fmt.Errorf("--url: %w", err)
		}
	}
	for _, n := range splitList(*raw.workloads) {
		w, err := bench.LookupWorkload(n)
		if err != nil {
			return fmt.Errorf("--workloads: %w", err)
		}
		m.Workloads = append(m.Workloads, w)
	}
	for _, md := range splitList(*raw.modes) {
		if !slices.Contains(bench.Modes, md) {
			return fmt.Errorf("--modes: unknown mode %q (known: %s)", md, strings.Join(bench.Modes, ", "))
		}
		m.Modes = append(m.Modes, md)
	}
	for _, s := range splitList(*raw.workers) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1024 {
			return fmt.Errorf("--workers: %q: want whole numbers from 1 to 1024", s)
		}
		m.Workers = append(m.Workers, n)
	}
	if len(m.Workloads) == 0 || len(m.Modes) == 0 || len(m.Workers) == 0 {
		return errors.New("--workloads, --modes, --workers: want at least one each")
	}
	m.ServeArgs = strings.Fields(*raw.serveArgs)
	return nil
}

// parseTargetSpec reads "[NAME=]METHOD URL [@BODYFILE] [c=N]". The body is
// the @file's, else --body's for methods that send one.
func parseTargetSpec(spec string, i int, hdr [][2]string, defBody []byte) (bench.NamedTarget, error) {
	nt := bench.NamedTarget{Name: fmt.Sprintf("target-%d", i+1)}
	if k, rest, ok := strings.Cut(spec, "="); ok && !strings.ContainsAny(k, " /:") {
		nt.Name, spec = k, rest
	}
	f := strings.Fields(spec)
	var bodyFile string
	for len(f) > 2 {
		opt := f[len(f)-1]
		switch {
		case strings.HasPrefix(opt, "@") && bodyFile == "":
			bodyFile = opt[1:]
		case strings.HasPrefix(opt, "c="):
			n, err := strconv.Atoi(opt[2:])
			if err != nil || n < 1 {
				return nt, fmt.Errorf("%q: %s: want c=N with N ≥ 1", spec, opt)
			}
			nt.Concurrency = n
		default:
			return nt, fmt.Errorf("%q: unknown option %q (want @BODYFILE or c=N)", spec, opt)
		}
		f = f[:len(f)-1]
	}
	t, err := bench.ParseTarget(strings.Join(f, " "))
	if err != nil {
		return nt, err
	}
	t.Header = hdr
	switch {
	case bodyFile != "":
		b, err := os.ReadFile(bodyFile)
		if err != nil {
			return nt, fmt.Errorf("%q: %w", spec, err)
		}
		t.Body = b
	case t.Method != "GET" && t.Method != "HEAD":
		t.Body = defBody
	}
	nt.Target = t
	return nt, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseBench(args []string) (*benchConfig, error) {
	fs, c, finish := benchFlagSet()
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return c, nil
}

func printBenchUsage(w io.Writer) {
	fs, _, _ := benchFlagSet()
	fs.SetOutput(w)
	fmt.Fprint(w, benchUsage)
	fs.PrintDefaults()
}

// runBench is `hybrid bench`: exit 0 when every cell ran, 1 when a cell or
// the run failed, 2 for bad usage.
func runBench(args []string) int {
	if len(args) > 0 && args[0] == "compare" {
		return runCompare(args[1:])
	}
	cfg, err := parseBench(args)
	if errors.Is(err, flag.ErrHelp) {
		printBenchUsage(os.Stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench: %v\n", err)
		return 2
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench: %v\n", err)
		return 1
	}
	m := &cfg.matrix
	m.Exe = exe
	if cfg.report != "" {
		if err := os.MkdirAll(cfg.report, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "hybrid bench: --report: %v\n", err)
			return 1
		}
	}
	report := bench.NewReport(append([]string{"hybrid", "bench"}, args...), cfg.flags, version())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stopProgress := startProgress(m)
	runErr := m.Run(ctx, report)
	stopProgress()

	bench.WriteTable(os.Stdout, report)
	code := 0
	for _, c := range report.Cells {
		if c.Error != "" {
			fmt.Fprintf(os.Stderr, "hybrid bench: %s: %s\n", c.Key(), c.Error)
			code = 1
		}
	}
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench: stopped after %d of %d cells: %v\n", len(report.Cells), len(m.Cells()), runErr)
		code = 1
	}
	if cfg.report != "" {
		if err := writeReport(cfg.report, report); err != nil {
			fmt.Fprintf(os.Stderr, "hybrid bench: %v\n", err)
			return 1
		}
		fmt.Printf("\nwrote %s and %s\n", filepath.Join(cfg.report, "results.json"), filepath.Join(cfg.report, "report.html"))
	}
	return code
}

func writeReport(dir string, r *bench.Report) error {
	if err := r.WriteFile(filepath.Join(dir, "results.json")); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "report.html"))
	if err != nil {
		return err
	}
	if err := bench.WriteHTML(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func runCompare(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "hybrid bench compare: want two results.json files: hybrid bench compare a.json b.json")
		return 2
	}
	a, err := bench.ReadReport(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench compare: %v\n", err)
		return 1
	}
	b, err := bench.ReadReport(args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench compare: %v\n", err)
		return 1
	}
	fmt.Printf("a: %s (%s)\nb: %s (%s)\n\n", args[0], strings.Join(a.Command, " "), args[1], strings.Join(b.Command, " "))
	if err := bench.WriteCompare(os.Stdout, a, b); err != nil {
		fmt.Fprintf(os.Stderr, "hybrid bench compare: %v\n", err)
		return 1
	}
	return 0
}

// startProgress draws one live line on a terminal stdout (cell i of n,
// phase, elapsed, current req/s) and nothing otherwise. The returned func
// stops it and clears the line.
func startProgress(m *bench.Matrix) func() {
	if _, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS); err != nil {
		return func() {}
	}
	m.Progress = new(bench.Progress)
	var (
		mu   sync.Mutex
		i, n int
		cell bench.Cell
	)
	m.OnCell = func(ci, cn int, c bench.Cell) {
		mu.Lock()
		i, n, cell = ci, cn, c
		mu.Unlock()
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				fmt.Print("\r\033[K")
				return
			case <-tick.C:
			}
			mu.Lock()
			ci, cn, c := i, n, cell
			mu.Unlock()
			if cn == 0 {
				continue
			}
			sent, el, warm := m.Progress.Snapshot()
			phase := "measuring"
			if warm {
				phase = "warming up"
			}
			rate := 0.0
			if el > 0 {
				rate = float64(sent) / el.Seconds()
			}
			fmt.Printf("\r\033[K[%d/%d] %s %s workers=%d  %s %.1fs  %.0f req/s", ci+1, cn, c.Name, c.Mode, c.Workers, phase, el.Seconds(), rate)
		}
	}()
	return func() { close(done); <-stopped }
}
