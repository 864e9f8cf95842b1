package promtext

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestAppendParsesBack(t *testing.T) {
	fams := []Family{
		{Name: "b_seconds", Help: "latency\nwith \\ newline", Type: Histogram, Series: []Series{
			{Labels: []Label{{"route", "/z"}}, Value: 0.75, Bounds: []float64{0.1, 1}, Counts: []uint64{1, 2, 0}},
			{Labels: []Label{{"route", "/a"}}, Value: 12, Bounds: []float64{0.1, 1}, Counts: []uint64{0, 1, 3}},
		}},
		{Name: "a_total", Help: "counts", Type: Counter, Series: []Series{
			{Labels: []Label{{"path", "q\"uo\\te\nd"}, {"x", "2"}}, Value: 3},
			{Labels: []Label{{"path", "plain"}, {"x", "1"}}, Value: 1e21},
		}},
		{Name: "c", Help: "gauge", Type: Gauge, Series: []Series{{Value: math.Inf(1)}}},
		{Name: "empty", Help: "no series: no lines", Type: Gauge},
	}
	out := string(Append(nil, fams))
	want := `# HELP a_total counts
# TYPE a_total counter
a_total{path="plain",x="1"} 1e+21
a_total{path="q\"uo\\te\nd",x="2"} 3
# HELP b_seconds latency\nwith \\ newline
# TYPE b_seconds histogram
b_seconds_bucket{route="/a",le="0.1"} 0
b_seconds_bucket{route="/a",le="1"} 1
b_seconds_bucket{route="/a",le="+Inf"} 4
b_seconds_sum{route="/a"} 12
b_seconds_count{route="/a"} 4
b_seconds_bucket{route="/z",le="0.1"} 1
b_seconds_bucket{route="/z",le="1"} 3
b_seconds_bucket{route="/z",le="+Inf"} 3
b_seconds_sum{route="/z"} 0.75
b_seconds_count{route="/z"} 3
# HELP c gauge
# TYPE c gauge
c +Inf
`
	if out != want {
		t.Fatalf("Append =\n%s\nwant\n%s", out, want)
	}

	p := expfmt.NewTextParser(model.LegacyValidation)
	parsed, err := p.TextToMetricFamilies(strings.NewReader(out))
	if err != nil {
		t.Fatalf("expfmt cannot parse the output: %v", err)
	}
	a := parsed["a_total"]
	if a.GetHelp() != "counts" || len(a.Metric) != 2 {
		t.Fatalf("a_total = %v", a)
	}
	if got := a.Metric[1].Label[0].GetValue(); got != "q\"uo\\te\nd" {
		t.Errorf("escaped label parsed back as %q", got)
	}
	if got := parsed["b_seconds"].GetHelp(); got != "latency\nwith \\ newline" {
		t.Errorf("help parsed back as %q", got)
	}
	h := parsed["b_seconds"].Metric[0].GetHistogram()
	if h.GetSampleCount() != 4 || h.GetSampleSum() != 12 || len(h.Bucket) != 3 || h.Bucket[1].GetCumulativeCount() != 1 {
		t.Errorf("histogram parsed back as %v", h)
	}
	if _, ok := parsed["empty"]; ok {
		t.Errorf("a family without series was written")
	}
	// Deterministic: the same families in another order give the same bytes.
	fams[0], fams[1] = fams[1], fams[0]
	if again := string(Append(nil, fams)); again != out {
		t.Errorf("second Append differs:\n%s", again)
	}
}

func TestContentTypeIsTextFormat(t *testing.T) {
	if got := expfmt.ResponseFormat(map[string][]string{"Content-Type": {ContentType}}); got.FormatType() != expfmt.TypeTextPlain {
		t.Errorf("expfmt reads %q as %v", ContentType, got)
	}
}
