package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// Target is one request the load generator sends again and again.
type Target struct {
	Method string
	URL    string      // http://host:port/path?query
	Header [][2]string // sent in order; Content-Type among them if wanted
	Body   []byte
}

// ParseTarget reads "METHOD URL", as in `--target 'POST http://h:3000/x'`.
func ParseTarget(s string) (Target, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return Target{}, fmt.Errorf("target %q: want \"METHOD http://host:port/path\"", s)
	}
	m := strings.ToUpper(f[0])
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
	default:
		return Target{}, fmt.Errorf("target %q: unknown method %q", s, f[0])
	}
	t := Target{Method: m, URL: f[1]}
	if _, _, err := t.hostAddr(); err != nil {
		return Target{}, err
	}
	return t, nil
}

// hostAddr is host:port to dial and whether it is TLS.
func (t Target) hostAddr() (string, bool, error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return "", false, fmt.Errorf("target url %q: %w", t.URL, err)
	}
	if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", false, fmt.Errorf("target url %q: want http://host:port/path or https://…", t.URL)
	}
	tls := u.Scheme == "https"
	host := u.Host
	if u.Port() == "" {
		if tls {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	return host, tls, nil
}

// Options bound and shape one run. Zero values: see each field.
type Options struct {
	// Concurrency is the number of connections: each runs one request at a
	// time. Closed loop: each sends its next request when the last answers.
	// Open loop: the most requests in flight at once. Must be ≥ 1.
	Concurrency int
	// Rate > 0 is open loop: requests per second on a fixed schedule, with
	// latency measured from each request's intended send time. 0 is closed
	// loop.
	Rate float64
	// Duration bounds the measured phase (0: no time bound).
	Duration time.Duration
	// Requests bounds the measured phase by count (0: no count bound). At
	// least one of Duration and Requests must be set.
	Requests int64
	// Warmup runs the same load first, uncounted (0: none).
	Warmup time.Duration
	// NewConn closes the connection after every request, so each request
	// pays a TCP connect (keep-alive is the default).
	NewConn bool
	// Timeout bounds one request from its send to its last response byte
	// (0: 30s). A request past it counts as a "timeout" error.
	Timeout time.Duration

	// onMeasure, if set, runs between the warm-up and the measured phase
	// (the matrix starts its /proc meter there).
	onMeasure func()
}

// Validate reports the first thing wrong with o.
func (o Options) Validate() error {
	switch {
	case o.Concurrency < 1:
		return fmt.Errorf("concurrency %d: want ≥ 1", o.Concurrency)
	case o.Rate < 0:
		return fmt.Errorf("rate %g: want ≥ 0", o.Rate)
	case o.Duration < 0 || o.Requests < 0 || o.Warmup < 0 || o.Timeout < 0:
		return errors.New("duration, requests, warmup and timeout: want ≥ 0")
	case o.Duration == 0 && o.Requests == 0:
		return errors.New("want a duration or a request count (or both)")
	}
	return nil
}

// Error kinds: every request that got no HTTP response is counted under
// exactly one of them.
const (
	ErrConnect = "connect" // could not open a connection
	ErrTimeout = "timeout" // no full response within Options.Timeout
	ErrClosed  = "closed"  // the server closed or reset the connection
	ErrOther   = "other"   // anything else the client reported
	// ErrUnsent counts open-loop requests whose send time came before the
	// end of the run but that never went out because every connection was
	// busy: the server was too slow for the schedule.
	ErrUnsent = "unsent"
)

func classify(err error) string {
	var op *net.OpError
	switch {
	case errors.Is(err, fasthttp.ErrDialTimeout), errors.As(err, &op) && op.Op == "dial":
		return ErrConnect
	case errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT):
		return ErrTimeout
	case errors.Is(err, fasthttp.ErrConnectionClosed), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		return ErrClosed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrTimeout
	}
	return ErrOther
}

// Progress is what a running load reports for a live display; safe for
// concurrent use. The zero value is ready.
type Progress struct {
	done    atomic.Int64 // requests finished in the current phase
	started atomic.Int64 // unix nanos the current phase began
	warm    atomic.Bool  // the current phase is the warm-up
}

func (p *Progress) begin(warm bool) {
	p.done.Store(0)
	p.warm.Store(warm)
	p.started.Store(time.Now().UnixNano())
}

// Snapshot is requests finished, time since the phase began, and whether it
// is the warm-up.
func (p *Progress) Snapshot() (done int64, elapsed time.Duration, warm bool) {
	s := p.started.Load()
	if s == 0 {
		return 0, 0, false
	}
	return p.done.Load(), time.Since(time.Unix(0, s)), p.warm.Load()
}

// Run sends t under o and returns what the measured phase saw. It returns
// early, with what it has, when ctx ends; the error is then ctx's.
// prog may be nil.
func Run(ctx context.Context, t Target, o Options, prog *Progress) (*Result, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	addr, tls, err := t.hostAddr()
	if err != nil {
		return nil, err
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if tls && t.expects() {
		return nil, errors.New("Expect: 100-continue is honoured over http only")
	}
	if prog == nil {
		prog = new(Progress)
	}
	client := &fasthttp.HostClient{
		Addr:                          addr,
		IsTLS:                         tls,
		Name:                          "hybrid-bench",
		MaxConns:                      o.Concurrency,
		MaxConnWaitTimeout:            o.Timeout,
		ReadTimeout:                   o.Timeout,
		WriteTimeout:                  o.Timeout,
		MaxIdleConnDuration:           time.Minute,
		DisableHeaderNamesNormalizing: true,
		// Bodies are read in full and dropped; a huge one is the server's
		// answer, not the generator's problem.
		MaxResponseBodySize: 1 << 30,
	}
	defer client.CloseIdleConnections()

	if o.Warmup > 0 {
		prog.begin(true)
		w := o
		w.Duration, w.Requests = o.Warmup, 0
		phase(ctx, client, addr, t, w, prog)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.onMeasure != nil {
		o.onMeasure()
	}
	prog.begin(false)
	cpu0, busy0 := selfCPU(), machineBusy()
	r := phase(ctx, client, addr, t, o, prog)
	r.ClientCPUS = (selfCPU() - cpu0).Seconds()
	r.MachineCPUS = (machineBusy() - busy0).Seconds()
	return r, ctx.Err()
}

// phase runs one bounded stretch of load and merges the per-connection
// recorders.
func phase(ctx context.Context, client *fasthttp.HostClient, addr string, t Target, o Options, prog *Progress) *Result {
	start := time.Now()
	var end time.Time // zero: no time bound
	if o.Duration > 0 {
		end = start.Add(o.Duration)
	}
	var next atomic.Int64 // index of the next request to start
	interval := time.Duration(0)
	if o.Rate > 0 {
		interval = time.Duration(float64(time.Second) / o.Rate)
	}

	recs := make([]*recorder, o.Concurrency)
	var wg sync.WaitGroup
	for i := range recs {
		rec := newRecorder()
		recs[i] = rec
		wg.Go(func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			t.fill(req, o.NewConn)
			do := func() error { return client.DoTimeout(req, resp, o.Timeout) }
			if t.expects() {
				ec, err := newExpectConn(t, addr, o.NewConn, o.Timeout)
				if err != nil {
					panic(err) // the URL parsed in ParseTarget
				}
				defer func() {
					if ec.conn != nil {
						ec.conn.Close()
					}
				}()
				do = func() error { return ec.do(resp) }
			}
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			for ctx.Err() == nil {
				n := next.Add(1) - 1
				if o.Requests > 0 && n >= o.Requests {
					return
				}
				sent := time.Now()
				if !end.IsZero() && !sent.Before(end) {
					return // a hard stop: no request starts after the end
				}
				if interval > 0 {
					intended := start.Add(time.Duration(n) * interval)
					if !end.IsZero() && !intended.Before(end) {
						return
					}
					if d := time.Until(intended); d > 0 {
						timer.Reset(d)
						select {
						case <-ctx.Done():
							return
						case <-timer.C:
						}
					}
					sent = intended
				}
				err := do()
				rec.record(resp.StatusCode(), err, time.Since(sent))
				prog.done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := merge(recs, elapsed)
	// Open loop: requests whose time came inside the run but that no
	// connection was free to send are errors, not silently skipped.
	if interval > 0 && !end.IsZero() && ctx.Err() == nil {
		due := int64(o.Duration / interval)
		if o.Duration%interval != 0 {
			due++
		}
		if o.Requests > 0 && due > o.Requests {
			due = o.Requests
		}
		if missing := due - r.Requests; missing > 0 {
			r.addError(ErrUnsent, missing)
		}
	}
	return r
}

// fill writes t into req; bodies are shared read-only by every connection.
func (t Target) fill(req *fasthttp.Request, newConn bool) {
	req.SetRequestURI(t.URL)
	req.Header.SetMethod(t.Method)
	for _, h := range t.Header {
		req.Header.Set(h[0], h[1])
	}
	if len(t.Body) > 0 {
		req.SetBodyRaw(t.Body)
	}
	if newConn {
		req.SetConnectionClose()
	}
}
