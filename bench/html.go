package bench

import (
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// WriteHTML renders r as one self-contained page: a summary table and, per
// workload, a throughput chart (modes × worker counts) and a latency
// percentile chart (one curve per mode and worker count). Charts are inline
// SVG: no script, no font or style from the network.
func WriteHTML(w io.Writer, r *Report) error {
	var groups []chartGroup
	for _, name := range cellNames(r.Cells) {
		var cells []Cell
		for _, c := range r.Cells {
			if c.Name == name && c.Result != nil {
				cells = append(cells, c)
			}
		}
		if len(cells) == 0 {
			continue
		}
		groups = append(groups, chartGroup{
			Name:       name,
			Throughput: template.HTML(throughputSVG(name, cells)),
			Latency:    template.HTML(latencySVG(name, cells)),
		})
	}
	return pageTmpl().Execute(w, struct {
		R       *Report
		Command string
		Header  []string
		Groups  []chartGroup
		Rows    []tableRow
	}{r, strings.Join(r.Command, " "), tableHeader, groups, rows(r.Cells)})
}

type chartGroup struct {
	Name                string
	Throughput, Latency template.HTML
}

// cellNames are the distinct names in first-seen order.
func cellNames(cells []Cell) []string {
	var names []string
	for _, c := range cells {
		if !slices.Contains(names, c.Name) {
			names = append(names, c.Name)
		}
	}
	return names
}

var modeColors = map[string]string{"inline": "#1f77b4", "pool": "#2ca02c", "isolate": "#d62728", "-": "#6a3d9a"}

func modeColor(m string) string {
	if c, ok := modeColors[m]; ok {
		return c
	}
	return "#ff7f0e"
}

// dashes tell worker counts apart on the latency chart.
var dashes = []string{"", "8 4", "2 3", "10 3 2 3", "4 4"}

func cellLabel(c Cell) string {
	s := c.Mode
	if s == "-" {
		s = c.Name
	}
	if c.Workers > 0 {
		s += fmt.Sprintf(", %d worker", c.Workers)
		if c.Workers > 1 {
			s += "s"
		}
	}
	return s
}

// svgDoc accumulates one chart.
type svgDoc struct{ b strings.Builder }

func (s *svgDoc) f(format string, a ...any) { fmt.Fprintf(&s.b, format, a...) }

func (s *svgDoc) text(x, y float64, anchor, class, t string) {
	s.f(`<text x="%.1f" y="%.1f" text-anchor="%s" class="%s">%s</text>`, x, y, anchor, class, html.EscapeString(t))
}

const (
	chartW, chartH           = 640.0, 360.0
	padL, padR, padT, padB   = 72.0, 32.0, 40.0, 92.0
	plotW, plotH             = chartW - padL - padR, chartH - padT - padB
	legendRowH, legendSwatch = 16.0, 12.0
)

func (s *svgDoc) open(title string) {
	s.f(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f" role="img" aria-label="%s">`,
		chartW, chartH, chartW, chartH, html.EscapeString(title))
	s.f(`<rect width="100%%" height="100%%" fill="#fff"/>`)
	s.text(chartW/2, 22, "middle", "title", title)
}

func (s *svgDoc) legend(items [][3]string) { // label, color, dash
	x, y := padL, chartH-36.0
	for _, it := range items {
		w := 34 + 6.5*float64(len(it[0]))
		if x+w > chartW-padR {
			x, y = padL, y+legendRowH
		}
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="6" stroke-dasharray="%s"/>`, x, y-4, x+24, y-4, it[1], it[2])
		s.text(x+30, y, "start", "legend", it[0])
		x += w
	}
}

// throughputSVG: grouped bars, one group per worker count, one bar per mode.
func throughputSVG(name string, cells []Cell) string {
	var s svgDoc
	s.open(name + ": throughput, 2xx requests per second (higher is better)")
	var workers []int
	var modes []string
	top := 0.0
	for _, c := range cells {
		if !slices.Contains(workers, c.Workers) {
			workers = append(workers, c.Workers)
		}
		if !slices.Contains(modes, c.Mode) {
			modes = append(modes, c.Mode)
		}
		top = max(top, c.Result.OKPerSec)
	}
	slices.Sort(workers)
	ymax, ticks := niceScale(top)
	y := func(v float64) float64 { return padT + plotH - v/ymax*plotH }
	for _, t := range ticks {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>`, padL, y(t), padL+plotW, y(t))
		s.text(padL-6, y(t)+4, "end", "tick", strconv.FormatFloat(t, 'f', -1, 64))
	}
	groupW := plotW / float64(len(workers))
	barW := groupW * 0.8 / float64(len(modes))
	for gi, n := range workers {
		gx := padL + groupW*float64(gi) + groupW*0.1
		label := "workers: ?"
		if n > 0 {
			label = fmt.Sprintf("%d worker", n)
			if n > 1 {
				label += "s"
			}
		}
		s.text(padL+groupW*(float64(gi)+0.5), padT+plotH+18, "middle", "tick", label)
		for mi, m := range modes {
			for _, c := range cells {
				if c.Workers != n || c.Mode != m {
					continue
				}
				v := c.Result.OKPerSec
				x := gx + barW*float64(mi)
				s.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s req/s</title></rect>`,
					x+1, y(v), barW-2, padT+plotH-y(v), modeColor(m), html.EscapeString(cellLabel(c)), fmtRate(v))
				s.text(x+barW/2, y(v)-4, "middle", "value", fmtRate(v))
			}
		}
	}
	s.axes("worker processes", "requests per second (2xx)")
	var items [][3]string
	for _, m := range modes {
		label := m
		if m == "-" {
			label = name
		}
		items = append(items, [3]string{label, modeColor(m), ""})
	}
	s.legend(items)
	s.f(`</svg>`)
	return s.b.String()
}

func (s *svgDoc) axes(xLabel, yLabel string) {
	s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="axis"/>`, padL, padT+plotH, padL+plotW, padT+plotH)
	s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="axis"/>`, padL, padT, padL, padT+plotH)
	s.text(padL+plotW/2, padT+plotH+38, "middle", "label", xLabel)
	s.f(`<text transform="translate(16 %.1f) rotate(-90)" text-anchor="middle" class="label">%s</text>`, padT+plotH/2, html.EscapeString(yLabel))
}

// niceScale is an axis top at or above v and 4–6 round ticks from 0.
func niceScale(v float64) (float64, []float64) {
	if v <= 0 {
		v = 1
	}
	step := math.Pow(10, math.Floor(math.Log10(v/5)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if v/(step*m) <= 6 {
			step *= m
			break
		}
	}
	top := math.Ceil(v/step) * step
	if top < v*1.08 { // room for the value labels
		top += step
	}
	var ticks []float64
	for t := 0.0; t <= top+step/2; t += step {
		ticks = append(ticks, t)
	}
	return top, ticks
}

// latencySVG: latency (log scale) against percentile on a scale where each
// "nine" (90, 99, 99.9 …) is one step, as HdrHistogram plots do.
func latencySVG(name string, cells []Cell) string {
	var s svgDoc
	s.open(name + ": latency by percentile, ms, log scale (lower is better)")
	const maxNines = 5.0 // the x axis ends at 99.999
	xOf := func(q float64) float64 {
		n := maxNines
		if q < 100 {
			n = math.Min(maxNines, -math.Log10(1-q/100))
		}
		return padL + n/maxNines*plotW
	}
	lo, hi := math.Inf(1), 0.0
	curves := make([][][2]float64, len(cells))
	for i, c := range cells {
		curves[i] = c.Result.Histogram.Quantiles()
		for _, p := range curves[i] {
			lo, hi = math.Min(lo, math.Max(p[1], 0.001)), math.Max(hi, p[1])
		}
	}
	if hi == 0 {
		lo, hi = 0.001, 1
	}
	dlo, dhi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dhi == dlo {
		dhi++
	}
	yOf := func(ms float64) float64 {
		v := math.Log10(math.Max(ms, math.Pow(10, dlo)))
		return padT + plotH - (v-dlo)/(dhi-dlo)*plotH
	}
	for d := dlo; d <= dhi; d++ {
		v := math.Pow(10, d)
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>`, padL, yOf(v), padL+plotW, yOf(v))
		s.text(padL-6, yOf(v)+4, "end", "tick", strconv.FormatFloat(v, 'f', -1, 64))
	}
	for _, q := range []float64{0, 90, 99, 99.9, 99.99, 99.999} {
		s.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>`, xOf(q), padT, xOf(q), padT+plotH)
		s.text(xOf(q), padT+plotH+18, "middle", "tick", strconv.FormatFloat(q, 'f', -1, 64)+"%")
	}
	workers := []int{}
	var items [][3]string
	for i, c := range cells {
		if !slices.Contains(workers, c.Workers) {
			workers = append(workers, c.Workers)
		}
		dash := dashes[slices.Index(workers, c.Workers)%len(dashes)]
		var pts strings.Builder
		for _, p := range curves[i] {
			fmt.Fprintf(&pts, "%.1f,%.1f ", xOf(p[0]), yOf(p[1]))
		}
		s.f(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s"><title>%s: p50 %s ms, p99 %s ms, p99.9 %s ms</title></polyline>`,
			strings.TrimSpace(pts.String()), modeColor(c.Mode), dash, html.EscapeString(cellLabel(c)),
			fmtMS(c.Result.Latency.P50), fmtMS(c.Result.Latency.P99), fmtMS(c.Result.Latency.P999))
		items = append(items, [3]string{cellLabel(c), modeColor(c.Mode), dash})
	}
	s.axes("percentile of requests", "latency (ms, log scale)")
	s.legend(items)
	s.f(`</svg>`)
	return s.b.String()
}

// pageTmpl is parsed on first use: every process of hybrid links this
// package, and an isolate child starts for one task, so package init time
// is paid per task (this parse was 0.2 ms of it, GODEBUG=inittrace=1).
var pageTmpl = sync.OnceValue(func() *template.Template { return template.Must(template.New("report").Parse(pageSource)) })

const pageSource = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hybrid bench — {{.R.Started.Format "2006-01-02 15:04 MST"}}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:28px 0 8px}
code,pre{font:12px ui-monospace,Menlo,Consolas,monospace;background:#f0f0f0;padding:2px 4px;border-radius:3px;white-space:pre-wrap;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0} dt{color:#666}
table{border-collapse:collapse;background:#fff;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f2f2f2} td:nth-child(-n+2),th:nth-child(-n+2),td:nth-child(11),th:nth-child(11){text-align:left} tr.failed td{color:#b00}
.charts{display:flex;flex-wrap:wrap;gap:16px} .charts svg{border:1px solid #ddd;max-width:100%;height:auto}
svg text{font-family:system-ui,sans-serif;fill:#222} svg .title{font-size:14px;font-weight:600} svg .tick{font-size:11px;fill:#555}
svg .label{font-size:12px} svg .legend{font-size:12px} svg .value{font-size:10px;fill:#333}
svg .grid{stroke:#e6e6e6;stroke-width:1} svg .axis{stroke:#333;stroke-width:1}
</style></head>
<body>
<h1>hybrid bench</h1>
<dl>
<dt>command</dt><dd><code>{{.Command}}</code></dd>
<dt>started</dt><dd>{{.R.Started.Format "2006-01-02 15:04:05 MST"}}</dd>
<dt>hybrid</dt><dd>{{.R.Hybrid}}, {{.R.Go}}, {{.R.OS}}/{{.R.Arch}}</dd>
<dt>machine</dt><dd>{{.R.CPU}}, {{.R.Cores}} cores ({{.R.Host}})</dd>
</dl>
<h2>Results</h2>
<p>req/s counts 2xx answers only. Latency is over every request sent, answered or failed. CPU is the server's whole
process tree (primary, workers, isolate children) per 2xx answer; peak RSS is the tree's largest total. The ×best
columns compare each mode to the best mode of the same workload and worker count.</p>
<table>
<tr>{{range .Header}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr{{if .Failed}} class="failed"{{end}}><td>{{.Name}}{{if .Disturbed}} <span title="other processes used more than 0.1 core during this cell: re-run it">(disturbed)</span>{{end}}</td><td>{{.Mode}}</td><td>{{.Workers}}</td><td>{{.Conns}}</td><td>{{.RPS}}</td><td>{{.P50}}</td><td>{{.P90}}</td><td>{{.P99}}</td><td>{{.P999}}</td><td>{{.Max}}</td><td>{{.Errors}}</td><td>{{.CPU}}</td><td>{{.RSS}}</td><td>{{.RatioRPS}}</td><td>{{.RatioP99}}</td></tr>
{{end}}</table>
{{range .Groups}}<h2>{{.Name}}</h2>
<div class="charts">{{.Throughput}}{{.Latency}}</div>
{{end}}
</body></html>
`
