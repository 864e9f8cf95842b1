package jsonw

import (
	"encoding/json"
	"testing"
)

func TestObjectMatchesEncodingJSON(t *testing.T) {
	type doc struct {
		S string  `json:"s"`
		E string  `json:"e"`
		I int64   `json:"i"`
		U uint64  `json:"u"`
		F float64 `json:"f"`
		Z float64 `json:"z"`
		B bool    `json:"b"`
		N struct {
			X int64 `json:"x"`
		} `json:"n"`
	}
	d := doc{S: "plain", E: "quote\" back\\ <tag> é \x01", I: -42, U: 1 << 63, F: 12.345, B: true}
	d.N.X = 7
	want, _ := json.Marshal(d)
	o := Open(nil)
	o.String("s", d.S)
	o.String("e", d.E)
	o.Int("i", d.I)
	o.Uint("u", d.U)
	o.Float("f", d.F)
	o.Float("z", d.Z)
	o.Bool("b", d.B)
	o.Key("n")
	n := Open(o.B)
	n.Int("x", 7)
	o.B = n.Close()
	if got := o.Close(); string(got) != string(want) {
		t.Errorf("appended\n%s\nwant (encoding/json)\n%s", got, want)
	}
}

func TestAppendAllocatesNothing(t *testing.T) {
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		o := Open(buf[:0])
		o.String("status", "ok")
		o.Int("pid", 1234)
		o.Float("uptime_s", 12.5)
		buf = o.Close()
	})
	if allocs != 0 {
		t.Errorf("appending an object: %v allocations; want 0", allocs)
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "q\"b\\", "<a>&", "\x00\x1f\n\r\t", "é ü 日本", "\u2028\u2029", "bad \xff\xfe utf8", "\x7f"} {
		want, _ := json.Marshal(s)
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Errorf("AppendString(%q) = %s; want %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("a\"<\xff\u2028")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := AppendString(nil, s); string(got) != string(want) {
			t.Errorf("AppendString(%q) = %s; want %s", s, got, want)
		}
	})
}
