package bench

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: latencies are recorded in microseconds from 1 µs to 60 s
// with 3 significant digits, so any percentile is exact to 0.1 %. A latency
// over 60 s is recorded as 60 s.
const (
	histMinUS = 1
	histMaxUS = 60_000_000
	histSig   = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMinUS, histMaxUS, histSig) }

// recorder belongs to one connection's goroutine, so it needs no lock.
type recorder struct {
	hist     *hdrhistogram.Histogram
	byStatus map[int]*hdrhistogram.Histogram // the same latencies, split by status
	status   map[int]int64
	errors   map[string]int64
}

func newRecorder() *recorder {
	return &recorder{hist: newHist(), byStatus: map[int]*hdrhistogram.Histogram{}, status: map[int]int64{}, errors: map[string]int64{}}
}

func (r *recorder) record(code int, err error, d time.Duration) {
	us := min(max(d.Microseconds(), histMinUS), histMaxUS)
	if err != nil {
		r.errors[classify(err)]++
	} else {
		r.status[code]++
		h := r.byStatus[code]
		if h == nil {
			h = newHist()
			r.byStatus[code] = h
		}
		h.RecordValue(us)
	}
	r.hist.RecordValue(us)
}

// Result is what one measured run saw. Every request sent is in Requests
// and in exactly one of Status or Errors; Errors also holds the open-loop
// requests that could not be sent ("unsent").
type Result struct {
	Requests int64            `json:"requests"` // sent and ended, answered or failed
	OK       int64            `json:"ok"`       // answered 2xx
	Status   map[string]int64 `json:"status"`   // every HTTP status answered: "200": n
	Errors   map[string]int64 `json:"errors"`   // no HTTP answer, by kind: "timeout": n
	ElapsedS float64          `json:"elapsed_s"`
	// OKPerSec is 2xx answers per second: fast errors never count as
	// throughput.
	OKPerSec float64 `json:"ok_per_s"`
	// Latency is over every sent request, answered or failed: a slow error
	// is as slow as a slow success.
	Latency   Latency   `json:"latency_ms"`
	Histogram Histogram `json:"histogram"`
	// LatencyByStatus splits Latency by HTTP status: how fast a 503
	// refusal came back, apart from the 200s.
	LatencyByStatus map[string]Latency `json:"latency_by_status_ms,omitempty"`
	// Server is the cost on the server side, known only when the bench
	// started the server itself.
	Server *Cost `json:"server,omitempty"`
	// ClientCPUS is the CPU time the load generator itself spent.
	ClientCPUS float64 `json:"client_cpu_s"`
	// MachineCPUS is the CPU time every core of the machine spent busy.
	MachineCPUS float64 `json:"machine_cpu_s"`
}

// Latency is a summary in milliseconds.
type Latency struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99.9"`
	Max  float64 `json:"max"`
}

// Cost is the server's process tree during the measured phase.
type Cost struct {
	CPUS         float64 `json:"cpu_s"`          // user+system seconds, whole tree, children reaped included
	CPUMSPerReq  float64 `json:"cpu_ms_per_req"` // CPUS over the 2xx answers: what one success costs
	PeakRSSBytes uint64  `json:"peak_rss_bytes"` // largest sum of RSS over the tree, sampled every 100 ms
	PeakProcs    int     `json:"peak_procs"`     // most processes in the tree at one sample
	// OtherCPUS is the machine's busy CPU time that was neither the
	// server's tree nor the bench: other processes competing for the
	// cores. Well above zero, the cell was disturbed and should be re-run.
	OtherCPUS float64 `json:"other_cpu_s"`
}

// Disturbed reports whether other processes used more than a tenth of one
// core on average during the measurement (the /proc sampling itself is a
// few hundredths).
func (r *Result) Disturbed() bool {
	return r.Server != nil && r.ElapsedS > 0 && r.Server.OtherCPUS/r.ElapsedS > 0.1
}

// Failed is every request that did not get a 2xx: other statuses, errors,
// and open-loop requests never sent.
func (r *Result) Failed() int64 { return r.Requests - r.OK + r.Errors[ErrUnsent] }

// okCount is r.OK, or 0 for no result.
func (r *Result) okCount() int64 {
	if r == nil {
		return 0
	}
	return r.OK
}

func (r *Result) addError(kind string, n int64) {
	if r.Errors == nil {
		r.Errors = map[string]int64{}
	}
	r.Errors[kind] += n
}

func merge(recs []*recorder, elapsed time.Duration) *Result {
	h := newHist()
	r := &Result{Status: map[string]int64{}, Errors: map[string]int64{}, ElapsedS: elapsed.Seconds()}
	byStatus := map[int]*hdrhistogram.Histogram{}
	for _, rec := range recs {
		h.Merge(rec.hist)
		for code, sh := range rec.byStatus {
			if byStatus[code] == nil {
				byStatus[code] = newHist()
			}
			byStatus[code].Merge(sh)
		}
		for code, n := range rec.status {
			r.Status[strconv.Itoa(code)] += n
			r.Requests += n
			if code >= 200 && code < 300 {
				r.OK += n
			}
		}
		for k, n := range rec.errors {
			r.Errors[k] += n
			r.Requests += n
		}
	}
	if r.ElapsedS > 0 {
		r.OKPerSec = float64(r.OK) / r.ElapsedS
	}
	r.Histogram = exportHist(h)
	r.Latency = summarize(h)
	if len(byStatus) > 1 {
		r.LatencyByStatus = map[string]Latency{}
		for code, sh := range byStatus {
			r.LatencyByStatus[strconv.Itoa(code)] = summarize(sh)
		}
	}
	return r
}

func summarize(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Min: ms(h.Min()), Mean: h.Mean() / 1000, Max: ms(h.Max()),
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)),
		P99: ms(h.ValueAtQuantile(99)), P999: ms(h.ValueAtQuantile(99.9)),
	}
}

// Histogram is the whole latency distribution, in microseconds, in
// HdrHistogram's standard compressed V2 encoding (base64): a few KB per
// cell, lossless, and readable by any HdrHistogram library or plotter.
type Histogram string

func exportHist(h *hdrhistogram.Histogram) Histogram {
	b, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil { // only for an unknown version
		panic("bench: encoding a histogram: " + err.Error())
	}
	return Histogram(b)
}

// decode rebuilds the histogram.
func (x Histogram) decode() (*hdrhistogram.Histogram, error) {
	if x == "" {
		return newHist(), nil
	}
	h, err := hdrhistogram.Decode([]byte(x))
	if err != nil {
		return nil, fmt.Errorf("latency histogram: %w", err)
	}
	return h, nil
}

// hdr is decode for a histogram known to be sound (made here, or checked by
// ReadReport); a broken one reads as empty.
func (x Histogram) hdr() *hdrhistogram.Histogram {
	h, err := x.decode()
	if err != nil {
		return newHist()
	}
	return h
}

// CountOver is how many recorded latencies exceed d (to the histogram's
// 0.1 % precision).
func (x Histogram) CountOver(d time.Duration) int64 {
	h := x.hdr()
	var n int64
	for _, b := range h.Distribution() {
		if b.From > d.Microseconds() {
			n += b.Count
		}
	}
	return n
}

// Quantiles are the points of a latency percentile curve, from p0 to p100
// on a scale that spreads the tail (…, 99, 99.9, 99.99).
func (x Histogram) Quantiles() [][2]float64 {
	h := x.hdr()
	if h.TotalCount() == 0 {
		return nil
	}
	var pts [][2]float64
	for _, q := range curveQuantiles {
		pts = append(pts, [2]float64{q, float64(h.ValueAtQuantile(q)) / 1000})
	}
	return pts
}

// curveQuantiles go 0, 10 … 90, then 9 steps per decade of 1/(1-q) up to
// 99.999, then 100.
var curveQuantiles = func() []float64 {
	var qs []float64
	for q := 0.0; q < 90; q += 10 {
		qs = append(qs, q)
	}
	for e := 1.0; e < 5; e += 1.0 / 9 {
		qs = append(qs, 100*(1-math.Pow(10, -e)))
	}
	return append(qs, 100)
}()

// MarshalJSON writes the maps in a stable order (encoding/json sorts keys),
// and never null.
func (r *Result) MarshalJSON() ([]byte, error) {
	type plain Result
	p := plain(*r)
	if p.Status == nil {
		p.Status = map[string]int64{}
	}
	if p.Errors == nil {
		p.Errors = map[string]int64{}
	}
	return json.Marshal(p)
}

// StatusCodes is the answered statuses in order.
func (r *Result) StatusCodes() []string {
	return slices.Sorted(maps.Keys(r.Status))
}

// ErrorSummary is every non-2xx outcome as "503:12 timeout:3", or "-".
func (r *Result) ErrorSummary() string {
	s := ""
	add := func(k string, n int64) {
		if n == 0 {
			return
		}
		if s != "" {
			s += " "
		}
		s += fmt.Sprintf("%s:%d", k, n)
	}
	for _, code := range r.StatusCodes() {
		if len(code) == 3 && code[0] == '2' {
			continue
		}
		add(code, r.Status[code])
	}
	for _, k := range slices.Sorted(maps.Keys(r.Errors)) {
		add(k, r.Errors[k])
	}
	if s == "" {
		return "-"
	}
	return s
}
