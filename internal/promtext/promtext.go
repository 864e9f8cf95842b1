// Package promtext writes the Prometheus text exposition format, version
// 0.0.4, by hand: counters, gauges and histograms, with HELP and TYPE lines,
// label values escaped as the format says, and a deterministic order
// (families by name, series by their label values).
//
// Why not prometheus/client_golang: its package initialisation adds about
// 1.6 ms to every process that links it, and every isolated task is one
// exec of this binary (bench/RESULTS.md, "What prometheus/client_golang
// would cost every process"). The format is small; the tests parse what
// this package writes with prometheus/common/expfmt, which only the tests
// link.
package promtext

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"
)

// ContentType is the Content-Type of the text format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Type is a metric family's type.
type Type uint8

// The types this package writes.
const (
	Counter Type = iota
	Gauge
	Histogram
)

func (t Type) String() string {
	switch t {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	case Histogram:
		return "histogram"
	}
	return "untyped"
}

// Label is one label pair.
type Label struct{ Name, Value string }

// Family is a metric name with its help text, type and series.
type Family struct {
	Name   string
	Help   string
	Type   Type
	Series []Series
}

// Series is one labelled sample. For a histogram, Bounds are the buckets'
// upper bounds, ascending, without +Inf; Counts has one count per bucket
// and one more for +Inf, each counting only its own bucket (Append writes
// them cumulative); Value is the sum of the observations.
type Series struct {
	Labels []Label
	Value  float64
	Bounds []float64
	Counts []uint64
}

// Append appends the exposition of fams to b and returns it. It sorts fams
// and their series in place.
func Append(b []byte, fams []Family) []byte {
	slices.SortFunc(fams, func(x, y Family) int { return strings.Compare(x.Name, y.Name) })
	for i := range fams {
		f := &fams[i]
		if len(f.Series) == 0 {
			continue
		}
		slices.SortFunc(f.Series, func(x, y Series) int { return compareLabels(x.Labels, y.Labels) })
		b = append(b, "# HELP "...)
		b = append(b, f.Name...)
		b = append(b, ' ')
		b = appendEscaped(b, f.Help, false)
		b = append(b, "\n# TYPE "...)
		b = append(b, f.Name...)
		b = append(b, ' ')
		b = append(b, f.Type.String()...)
		b = append(b, '\n')
		for _, s := range f.Series {
			if f.Type != Histogram {
				b = appendSample(b, f.Name, "", s.Labels, Label{}, s.Value)
				continue
			}
			var cum uint64
			for j, n := range s.Counts {
				cum += n
				le := math.Inf(1)
				if j < len(s.Bounds) {
					le = s.Bounds[j]
				}
				b = appendSample(b, f.Name, "_bucket", s.Labels, Label{"le", formatFloat(le)}, float64(cum))
			}
			b = appendSample(b, f.Name, "_sum", s.Labels, Label{}, s.Value)
			b = appendSample(b, f.Name, "_count", s.Labels, Label{}, float64(cum))
		}
	}
	return b
}

func compareLabels(x, y []Label) int {
	for i := range min(len(x), len(y)) {
		if c := cmp.Or(strings.Compare(x[i].Name, y[i].Name), strings.Compare(x[i].Value, y[i].Value)); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(x), len(y))
}

func appendSample(b []byte, name, suffix string, labels []Label, extra Label, v float64) []byte {
	b = append(b, name...)
	b = append(b, suffix...)
	if len(labels) > 0 || extra.Name != "" {
		b = append(b, '{')
		for i, l := range labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendLabel(b, l)
		}
		if extra.Name != "" {
			if len(labels) > 0 {
				b = append(b, ',')
			}
			b = appendLabel(b, extra)
		}
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = append(b, formatFloat(v)...)
	return append(b, '\n')
}

func appendLabel(b []byte, l Label) []byte {
	b = append(b, l.Name...)
	b = append(b, `="`...)
	b = appendEscaped(b, l.Value, true)
	return append(b, '"')
}

// appendEscaped escapes \ and newline (HELP text), and " too in a label
// value.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
