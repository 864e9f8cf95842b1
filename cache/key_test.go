package cache

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"regexp"
	"strings"
	"testing"

	"lukechampine.com/blake3"
)

func TestNewKeyUnambiguous(t *testing.T) {
	type req struct {
		name   string
		params map[string]string
		input  string
	}
	reqs := []req{
		{"ab", nil, ""},
		{"a", map[string]string{"b": ""}, ""},
		{"a", nil, "b"},
		{"a", map[string]string{"b": "c"}, ""},
		{"a", map[string]string{"bc": ""}, ""},
		{"a", map[string]string{"b": "", "c": ""}, ""},
		{"a", map[string]string{"b": "c"}, "d"},
		{"a", map[string]string{"b": "cd"}, ""},
		{"a", map[string]string{}, "\x00\x00\x00\x00\x00\x00\x00\x00"},
		{"", nil, ""},
	}
	seen := map[Key]int{}
	for i, r := range reqs {
		k := NewKey(r.name, r.params, []byte(r.input))
		if j, ok := seen[k]; ok {
			t.Errorf("requests %d %+v and %d %+v share a key", i, r, j, reqs[j])
		}
		seen[k] = i
	}
	// nil and empty params are the same request.
	if NewKey("a", nil, nil) != NewKey("a", map[string]string{}, []byte{}) {
		t.Error("nil and empty params or input give different keys")
	}
}

func TestNewKeyParamOrder(t *testing.T) {
	// Maps iterate in random order: many tries would see an order leak.
	want := NewKey("w", map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"}, []byte("in"))
	for range 50 {
		if NewKey("w", map[string]string{"d": "4", "c": "3", "b": "2", "a": "1"}, []byte("in")) != want {
			t.Fatal("the same params built in another order give another key")
		}
	}
}

// TestNewKeyPinned pins the encoding: a key that changes here changes
// every address in Redis. Change keyDomain with the encoding, and this.
func TestNewKeyPinned(t *testing.T) {
	k := NewKey("thumbnail", map[string]string{"w": "128", "fmt": "webp"}, []byte("input"))
	const want = "b9d0e83a161468dc93a3e69cd8b7ae964e39b67dbb7a7096a1c135bfca5f2c00"
	if got := k.String(); got != want {
		t.Errorf("NewKey(thumbnail, w=128 fmt=webp, input) = %s; want %s", got, want)
	}
	// The encoding as its doc spells it, built by hand.
	u64 := func(n int) string { return string(binary.BigEndian.AppendUint64(nil, uint64(n))) }
	enc := "hybrid/cache/key/v1\x00" +
		u64(9) + "thumbnail" +
		u64(2) + u64(3) + "fmt" + u64(4) + "webp" + u64(1) + "w" + u64(3) + "128" +
		u64(5) + "input"
	if Key(blake3.Sum256([]byte(enc))) != k {
		t.Error("NewKey's digest is not BLAKE3-256 of the encoding its doc gives")
	}
}

func TestETag(t *testing.T) {
	k := NewKey("w", nil, []byte("x"))
	e := k.ETag()
	if len(e) != 34 || e[0] != '"' || e[33] != '"' {
		t.Fatalf("ETag() = %q; want 32 characters in quotes", e)
	}
	raw, err := base64.RawURLEncoding.DecodeString(e[1:33])
	if err != nil || !bytes.Equal(raw, k[:24]) {
		t.Errorf("ETag() = %q decodes to %x, %v; want the key's first 24 bytes %x", e, raw, err, k[:24])
	}
	for _, c := range e[1:33] {
		if c < 0x21 || c == '"' || c > 0x7e {
			t.Errorf("ETag() = %q holds %q, not an etagc", e, c)
		}
	}
}

func TestMatchETag(t *testing.T) {
	const tag = `"abc"`
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{``, false},
		{`*`, true},
		{` * `, true},
		{`"abc"`, true},
		{`W/"abc"`, true},
		{`"xyz", "abc"`, true},
		{`"xyz","abc"`, true},
		{" \t\"xyz\" ,\t W/\"abc\" \t", true},
		{`,,"abc",,`, true},
		{`"abcd"`, false},
		{`"ab"`, false},
		{`abc`, false},
		{`"abc`, false},
		{`"xyz" "abc"`, false},   // no comma between tags: malformed
		{`"xyz"x, "abc"`, false}, // junk after a tag: malformed from there on
		{`w/"abc"`, false},       // W is case-sensitive
		{`"x,y", "abc"`, true},   // a comma inside a tag is part of it
		{`"", "abc"`, true},
		{`*, "xyz"`, true},
	} {
		if got := MatchETag([]byte(tc.header), tag); got != tc.want {
			t.Errorf("MatchETag(%q, %q) = %v; want %v", tc.header, tag, got, tc.want)
		}
	}
	if !MatchETag([]byte(`"abc"`), `W/"abc"`) {
		t.Error(`MatchETag("abc", W/"abc") = false; want the weak comparison to ignore W/ on our side too`)
	}
}

func TestMatchETagAllocs(t *testing.T) {
	k := NewKey("w", nil, nil)
	tag := k.ETag()
	header := []byte(strings.Repeat(`W/"0123456789abcdef0123456789abcdef", `, 100) + tag)
	if n := testing.AllocsPerRun(100, func() { MatchETag(header, tag) }); n != 0 {
		t.Errorf("MatchETag allocates %v times; want 0", n)
	}
}

// TestMatchETagHostile runs MatchETag on 1 MiB headers built to make a
// naive parser quadratic: long unterminated tags, many near-matches, many
// empty elements. It must take time linear in the header.
func TestMatchETagHostile(t *testing.T) {
	tag := NewKey("w", nil, nil).ETag()
	near := tag[:len(tag)-2] + `x"`
	for _, h := range []string{
		strings.Repeat(near+",", 1<<20/len(near)),
		strings.Repeat(",", 1<<20),
		strings.Repeat(" ", 1<<20),
		`"` + strings.Repeat("a", 1<<20),
		strings.Repeat(`""`, 1<<19),
		strings.Repeat(`W/`, 1<<19),
	} {
		if MatchETag([]byte(h), tag) {
			t.Errorf("a hostile header of %d bytes matched", len(h))
		}
	}
}

// listElement is one element of an If-None-Match list as RFC 9110's
// grammar gives it (#entity-tag, with "*"), and what may follow it.
var listElement = regexp.MustCompile(`\A[ \t,]*(\*|(?:W/)?("[^"]*"))[ \t]*(?:,|\z)`)

// matchETagSpec is an independent reading of RFC 9110 §13.1.2 for the
// fuzz target to compare with: consume well-formed elements with the
// grammar's regular expression until one matches or none is left.
func matchETagSpec(h, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	for {
		m := listElement.FindStringSubmatchIndex(h)
		if m == nil {
			return false
		}
		if h[m[2]:m[3]] == "*" || m[4] >= 0 && h[m[4]:m[5]] == etag {
			return true
		}
		h = h[m[1]:]
	}
}

func FuzzMatchETag(f *testing.F) {
	for _, s := range []string{`*`, `"abc"`, `W/"abc", "x"`, ` ,"a" , W/"abc"`, `"a`, `W/`, `"x"y`} {
		f.Add(s, `"abc"`)
	}
	f.Fuzz(func(t *testing.T, header, etag string) {
		if got, want := MatchETag([]byte(header), etag), matchETagSpec(header, etag); got != want {
			t.Errorf("MatchETag(%q, %q) = %v; the spec reading says %v", header, etag, got, want)
		}
	})
}
