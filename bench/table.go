package bench

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
)

// fmtMS prints milliseconds with three significant digits or so.
func fmtMS(ms float64) string {
	switch {
	case ms < 1:
		return strconv.FormatFloat(ms, 'f', 3, 64)
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64)
	case ms < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64)
	}
	return strconv.FormatFloat(ms, 'f', 0, 64)
}

func fmtRate(v float64) string {
	if v < 100 {
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	if v < 0.1 {
		return strconv.FormatFloat(v, 'g', 2, 64) + "×"
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + "×"
}

// groupKey names the cells whose modes are compared with each other.
func groupKey(c Cell) string { return fmt.Sprintf("%s/w%d", c.Name, c.Workers) }

// best is, for each workload and worker count with more than one mode, the
// highest 2xx throughput and the lowest p99 over its modes: the yardsticks
// of the ratio columns.
func best(cells []Cell) map[string][2]float64 {
	b := map[string][2]float64{}
	n := map[string]int{}
	for _, c := range cells {
		n[groupKey(c)]++
	}
	for _, c := range cells {
		k := groupKey(c)
		if c.Result == nil || c.Result.OK == 0 || n[k] < 2 {
			continue
		}
		cur, ok := b[k]
		if !ok {
			cur = [2]float64{0, math.Inf(1)}
		}
		b[k] = [2]float64{max(cur[0], c.Result.OKPerSec), min(cur[1], c.Result.Latency.P99)}
	}
	return b
}

// tableHeader and tableRow are the one layout of the terminal table and of
// report.html's.
var tableHeader = []string{"workload", "mode", "workers", "conns", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
	"max ms", "errors", "CPU ms/req", "peak RSS MiB", "req/s ×best", "p99 ×best"}

type tableRow struct {
	Name, Mode, Workers, Conns, RPS, P50, P90, P99, P999, Max, Errors, CPU, RSS, RatioRPS, RatioP99 string
	Failed, Disturbed                                                                               bool
}

func (t tableRow) cols() []string {
	return []string{t.Name, t.Mode, t.Workers, t.Conns, t.RPS, t.P50, t.P90, t.P99, t.P999, t.Max, t.Errors, t.CPU, t.RSS, t.RatioRPS, t.RatioP99}
}

// rows formats every cell. The ratios compare a cell's throughput and p99
// with the best mode of its workload and worker count: 1.00× is the best;
// throughput below 1 and p99 above 1 are slower; "-" where nothing compares.
func rows(cells []Cell) []tableRow {
	b := best(cells)
	out := make([]tableRow, 0, len(cells))
	for _, c := range cells {
		t := tableRow{Name: c.Name, Mode: c.Mode, Workers: "?", Conns: strconv.Itoa(c.Concurrency)}
		if c.Workers > 0 {
			t.Workers = strconv.Itoa(c.Workers)
		}
		if c.Rate > 0 {
			t.Conns += "@" + fmtRate(c.Rate) + "/s"
		}
		res := c.Result
		if res == nil {
			t.Failed, t.Errors = true, "failed: "+oneLine(c.Error)
			for _, f := range []*string{&t.RPS, &t.P50, &t.P90, &t.P99, &t.P999, &t.Max, &t.CPU, &t.RSS, &t.RatioRPS, &t.RatioP99} {
				*f = "-"
			}
			out = append(out, t)
			continue
		}
		l := res.Latency
		t.RPS, t.P50, t.P90, t.P99, t.P999, t.Max = fmtRate(res.OKPerSec), fmtMS(l.P50), fmtMS(l.P90), fmtMS(l.P99), fmtMS(l.P999), fmtMS(l.Max)
		t.Errors, t.CPU, t.RSS = res.ErrorSummary(), "-", "-"
		if res.Server != nil {
			t.CPU = fmtMS(res.Server.CPUMSPerReq)
			t.RSS = strconv.FormatFloat(float64(res.Server.PeakRSSBytes)/(1<<20), 'f', 0, 64)
		}
		t.RatioRPS, t.RatioP99 = "-", "-"
		if y, ok := b[groupKey(c)]; ok && y[0] > 0 {
			t.RatioRPS, t.RatioP99 = fmtRatio(res.OKPerSec/y[0]), fmtRatio(l.P99/y[1])
		}
		t.Disturbed = res.Disturbed()
		out = append(out, t)
	}
	return out
}

// WriteTable prints r's cells as an aligned table, then a line for each
// cell answered with more than one status (the latency of each), and a
// note for each cell that other processes disturbed.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(tableHeader, "\t")+"\t")
	for _, t := range rows(r.Cells) {
		fmt.Fprintln(tw, strings.Join(t.cols(), "\t")+"\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, c := range r.Cells {
		if c.Result == nil || len(c.Result.LatencyByStatus) == 0 {
			continue
		}
		for _, code := range c.Result.StatusCodes() {
			l := c.Result.LatencyByStatus[code]
			fmt.Fprintf(w, "%s: %s ×%d  p50 %s  p99 %s  max %s ms\n", c.Key(), code, c.Result.Status[code],
				fmtMS(l.P50), fmtMS(l.P99), fmtMS(l.Max))
		}
	}
	for _, c := range r.Cells {
		if c.Result != nil && c.Result.Disturbed() {
			fmt.Fprintf(w, "note: %s: other processes used %.1f CPU-s of the machine during its %.0f s: disturbed, re-run it\n",
				c.Key(), c.Result.Server.OtherCPUS, c.Result.ElapsedS)
		}
	}
	return nil
}

func oneLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	return s
}

// WriteCompare prints, for every cell in both reports (matched by name,
// mode and workers), b's figures as ratios to a's: req/s b/a above 1 and
// p99 and CPU b/a below 1 mean b is faster. It ends with the geometric mean
// of the throughput ratios.
func WriteCompare(w io.Writer, a, b *Report) error {
	byKey := map[string]Cell{}
	for _, c := range a.Cells {
		byKey[c.Key()] = c
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cell\treq/s a\treq/s b\tb/a\tp99 ms a\tp99 ms b\tb/a\tCPU ms/req a\tCPU ms/req b\tb/a\terrors a\terrors b\t")
	logSum, n, matched := 0.0, 0, 0
	for _, cb := range b.Cells {
		ca, ok := byKey[cb.Key()]
		if !ok || ca.Result == nil || cb.Result == nil {
			continue
		}
		matched++
		ra, rb := ca.Result, cb.Result
		cpuA, cpuB, cpuR := "-", "-", "-"
		if ra.Server != nil && rb.Server != nil {
			cpuA, cpuB = fmtMS(ra.Server.CPUMSPerReq), fmtMS(rb.Server.CPUMSPerReq)
			cpuR = fmtRatio(rb.Server.CPUMSPerReq / ra.Server.CPUMSPerReq)
		}
		tr := rb.OKPerSec / ra.OKPerSec
		if tr > 0 && !math.IsInf(tr, 0) {
			logSum += math.Log(tr)
			n++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", cb.Key(),
			fmtRate(ra.OKPerSec), fmtRate(rb.OKPerSec), fmtRatio(tr),
			fmtMS(ra.Latency.P99), fmtMS(rb.Latency.P99), fmtRatio(rb.Latency.P99/ra.Latency.P99),
			cpuA, cpuB, cpuR, ra.ErrorSummary(), rb.ErrorSummary())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if matched == 0 {
		return fmt.Errorf("compare: no cell of b matches a cell of a (cells match by name/mode/workers)")
	}
	if n > 0 {
		_, err := fmt.Fprintf(w, "\ngeometric mean of req/s b/a over %d cells: %s\n", n, fmtRatio(math.Exp(logSum/float64(n))))
		return err
	}
	return nil
}
