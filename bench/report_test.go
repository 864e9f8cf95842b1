package bench

import (
	"bytes"
	"encoding/json"
	"math"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func sampleReport(t *testing.T) *Report {
	t.Helper()
	f := startFaulty(t, every(7))
	r := NewReport([]string{"hybrid", "bench", "--x"}, map[string]string{"c": "4"}, "v-test")
	for _, mode := range []string{"inline", "pool"} {
		res := run(t, f.url, Options{Concurrency: 4, Requests: 60})
		res.Server = &Cost{CPUS: 0.5, CPUMSPerReq: 12.5, PeakRSSBytes: 40 << 20, PeakProcs: 3}
		r.Cells = append(r.Cells, Cell{Name: "hash-64k", Mode: mode, Workers: 2, Target: "GET " + f.url, Concurrency: 4, Result: res})
	}
	r.Cells = append(r.Cells, Cell{Name: "thumbnail", Mode: "isolate", Workers: 2, Concurrency: 4, Error: "bench: server did not start\nlog…"})
	return r
}

// results.json holds every figure: read back, it is the same report, and
// the percentiles recomputed from its histogram are the ones it states.
func TestReportRoundTrips(t *testing.T) {
	r := sampleReport(t)
	path := filepath.Join(t.TempDir(), "results.json")
	if err := r.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(r, back) {
		a, _ := json.Marshal(r)
		b, _ := json.Marshal(back)
		t.Fatalf("round trip changed the report:\n%s\n%s", a, b)
	}
	for _, c := range back.Cells {
		if c.Result == nil {
			continue
		}
		if got := summarize(c.Result.Histogram.hdr()); got != c.Result.Latency {
			t.Errorf("%s: latency from the histogram %+v; stated %+v", c.Key(), got, c.Result.Latency)
		}
		if n := c.Result.Histogram.hdr().TotalCount(); n != c.Result.Requests {
			t.Errorf("%s: histogram holds %d; want %d requests", c.Key(), n, c.Result.Requests)
		}
	}
}

func TestReadReportRefusesOtherFormats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	r := &Report{Format: 99}
	r.WriteFile(path)
	if _, err := ReadReport(path); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Errorf("ReadReport of format 99: %v; want a format error", err)
	}
}

func TestReadReportRefusesABrokenHistogram(t *testing.T) {
	r := sampleReport(t)
	r.Cells[0].Result.Histogram = "HISTFAAA-not-base64"
	path := filepath.Join(t.TempDir(), "r.json")
	r.WriteFile(path)
	if _, err := ReadReport(path); err == nil || !strings.Contains(err.Error(), "hash-64k/inline/w2: latency histogram") {
		t.Errorf("ReadReport with a broken histogram: %v; want an error naming the cell", err)
	}
}

func TestTableAndCompare(t *testing.T) {
	r := sampleReport(t)
	var tb bytes.Buffer
	if err := WriteTable(&tb, r); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	for _, want := range []string{"req/s ×best", "hash-64k", "inline", "503:", "1.00×", "failed: bench: server did not start"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "log…") {
		t.Errorf("table shows more than the first line of a cell's error:\n%s", out)
	}
	var cb bytes.Buffer
	if err := WriteCompare(&cb, r, r); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cb.String(), "geometric mean of req/s b/a over 2 cells: 1.00×") {
		t.Errorf("a report against itself:\n%s", cb.String())
	}
	other := &Report{Cells: []Cell{{Name: "x", Mode: "-", Result: r.Cells[0].Result}}}
	if err := WriteCompare(&cb, r, other); err == nil {
		t.Error("compare with no common cell: want an error")
	}
}

func TestHTMLIsSelfContained(t *testing.T) {
	var b bytes.Buffer
	if err := WriteHTML(&b, sampleReport(t)); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	for _, want := range []string{"<svg", "requests per second (2xx)", "latency (ms, log scale)", "percentile of requests", "worker processes", "pool, 2 workers"} {
		if !strings.Contains(page, want) {
			t.Errorf("report.html lacks %q", want)
		}
	}
	for _, bad := range []string{"<script", "http://cdn", "https://", "<link", "@import"} {
		if strings.Contains(page, bad) {
			t.Errorf("report.html holds %q: it must open without the network", bad)
		}
	}
}

// The tree meter sees a real process tree: a shell, its children, and the
// CPU they burn.
func TestTreeMeter(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 5 & sleep 5 & i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	m, err := startTreeMeter(cmd.Process.Pid, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	c, err := m.stop(10)
	if err != nil {
		t.Fatal(err)
	}
	// CPU/req is CPUS×1000/10, which need not equal CPUS×100 to the last bit
	// (0.14 × 100 is 14.000000000000002): compare within rounding.
	if c.PeakProcs < 3 || c.PeakRSSBytes == 0 || c.CPUS <= 0 || math.Abs(c.CPUMSPerReq-c.CPUS*100) > 1e-9 {
		t.Errorf("cost %+v; want ≥ 3 processes, some RSS, some CPU, CPU/req = CPU/10", c)
	}
	if _, err := startTreeMeter(1<<30, time.Second); err == nil {
		t.Error("meter of a pid that does not exist: want an error")
	}
}
