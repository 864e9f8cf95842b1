package handlers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func run(t testing.TB, name string, p Params, input []byte) ([]byte, error) {
	t.Helper()
	w, ok := Lookup(name)
	if !ok {
		t.Fatalf("no workload %q", name)
	}
	if w.CheckParams != nil {
		if err := w.CheckParams(p); err != nil {
			return nil, err
		}
	}
	if w.Check != nil {
		if err := w.Check(p, input); err != nil {
			return nil, err
		}
	}
	return w.Run(context.Background(), p, input)
}

func status(err error) (int, string) {
	var se *server.Error
	if errors.As(err, &se) {
		return se.Status, se.Code
	}
	return 500, ""
}

// Official known-answer vectors: NIST FIPS 180 ("abc", one million "a"),
// RFC 1321 (MD5), RFC 7693 (BLAKE2b "abc"), the BLAKE3 team's
// test_vectors.json (empty input), xxHash's XXH3_64bits("") and the CRC-32C
// check value of "123456789" (RFC 3720).
func TestHashKnownAnswers(t *testing.T) {
	million := strings.Repeat("a", 1_000_000)
	for _, tc := range []struct{ algo, in, want string }{
		{"sha256", "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"sha256", million, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
		{"sha512", "abc", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"},
		{"sha1", "abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
		{"md5", "abc", "900150983cd24fb0d6963f7d28e17f72"},
		{"blake2b-256", "abc", "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"},
		{"blake2b-512", "abc", "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"},
		{"blake3", "", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{"xxh3-64", "", "2d06800538d394c2"},
		{"crc32c", "123456789", "e3069283"},
	} {
		out, err := run(t, "hash", Params{"algo": tc.algo}, []byte(tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.algo, err)
		}
		var r hashResult
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if r.Digest != tc.want || r.Size != len(tc.in) || r.Algo != tc.algo {
			t.Errorf("%s(%.10q) = %+v; want digest %s, size %d", tc.algo, tc.in, r, tc.want, len(tc.in))
		}
	}
	out, _ := run(t, "hash", Params{"algo": "sha256", "encoding": "base64"}, []byte("abc"))
	if !bytes.Contains(out, []byte(`"ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="`)) {
		t.Errorf("base64 sha256(abc) = %s", out)
	}
}

func TestHashBadParams(t *testing.T) {
	if _, err := run(t, "hash", Params{"algo": "sha3"}, nil); !hasStatus(err, 404, CodeUnknownAlgo) ||
		!strings.Contains(err.Error(), "blake3") {
		t.Errorf("unknown algo = %v; want 404 listing the supported ones", err)
	}
	if _, err := run(t, "hash", Params{"algo": "md5", "encoding": "rot13"}, nil); !hasStatus(err, 400, CodeBadParam) {
		t.Errorf("bad encoding = %v; want 400", err)
	}
}

func hasStatus(err error, st int, code string) bool {
	s, c := status(err)
	return s == st && c == code
}

// Verify against hashes produced by other implementations (testdata).
func TestPasswordVerifyForeignHashes(t *testing.T) {
	f, err := os.Open("testdata/passwords.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		parts := strings.Split(sc.Text(), "\t")
		algo, pw, hash := parts[0], parts[1], parts[2]
		for _, tc := range []struct {
			pw   string
			want bool
		}{{pw, true}, {pw + "!", false}} {
			body, _ := json.Marshal(map[string]string{"password": tc.pw, "hash": hash})
			out, err := run(t, "password-verify", Params{}, body)
			if err != nil {
				t.Fatalf("%s verify %q: %v", algo, hash, err)
			}
			if want := fmt.Sprintf(`{"match":%v}`, tc.want); string(out) != want {
				t.Errorf("%s verify(%q, %s) = %s; want %s", algo, tc.pw, hash, out, want)
			}
		}
		n++
	}
	if n < 6 {
		t.Fatalf("read %d vectors; want 6", n)
	}
}

func TestPasswordRoundTripAndBounds(t *testing.T) {
	cheap := map[string]string{
		"argon2id": `{"memory_kib":7168,"iterations":5,"parallelism":1}`, // the new-hash minimums
		"bcrypt":   `{"cost":10}`,
		"scrypt":   `{"n":8192,"r":8,"p":10}`,
	}
	for algo, params := range cheap {
		out, err := run(t, "password-hash", Params{"algo": algo}, []byte(`{"password":"s3cret","params":`+params+`}`))
		if err != nil {
			t.Fatalf("%s: %v", algo, err)
		}
		var h struct{ Hash string }
		json.Unmarshal(out, &h)
		body, _ := json.Marshal(map[string]string{"password": "s3cret", "hash": h.Hash})
		if out, err := run(t, "password-verify", Params{}, body); err != nil || string(out) != `{"match":true}` {
			t.Errorf("%s: verify own hash %q = %s, %v", algo, h.Hash, out, err)
		}
		if algo == "bcrypt" && !strings.HasPrefix(h.Hash, "$2b$10$") {
			t.Errorf("bcrypt hash %q; want $2b$10$…", h.Hash)
		}
	}
	for _, tc := range []struct {
		algo, body string
		status     int
		code       string
	}{
		{"argon2id", `{"password":"x","params":{"memory_kib":1048576}}`, 422, CodeParamOutOfRange},
		{"argon2id", `{"password":"x","params":{"iterations":0}}`, 422, CodeParamOutOfRange},
		{"argon2id", `{"password":"x","params":{"salt":"x"}}`, 400, CodeBadParam},
		{"argon2id", `{"password":"x","params":{"iterations":"2"}}`, 400, CodeBadParam},
		{"bcrypt", `{"password":"x","params":{"cost":31}}`, 422, CodeParamOutOfRange},
		{"bcrypt", `{"password":"` + strings.Repeat("x", 73) + `"}`, 422, CodePasswordTooLong},
		{"scrypt", `{"password":"x","params":{"n":1000}}`, 400, CodeBadParam},
		{"scrypt", `{"password":"x","params":{"n":262144,"r":16}}`, 422, CodeParamOutOfRange},
		{"scrypt", `{"password":"x","params":{"n":1048576}}`, 422, CodeParamOutOfRange},
		// The work a request names is bounded (issue 11: 12.5 s from this body).
		{"scrypt", `{"password":"x","params":{"n":262144,"r":8,"p":16}}`, 422, CodeParamOutOfRange},
		{"argon2id", `{"password":"x","params":{"memory_kib":262144,"iterations":10}}`, 422, CodeParamOutOfRange},
		// And so is how little: OWASP's minimums, for a new hash.
		{"argon2id", `{"password":"x","params":{"memory_kib":8,"iterations":1}}`, 422, CodeParamOutOfRange},
		{"argon2id", `{"password":"x","params":{"memory_kib":19456,"iterations":1}}`, 422, CodeParamOutOfRange},
		{"bcrypt", `{"password":"x","params":{"cost":4}}`, 422, CodeParamOutOfRange},
		{"scrypt", `{"password":"x","params":{"n":1024,"r":8,"p":1}}`, 422, CodeParamOutOfRange},
		// One object, exact keys, once each, no lossy text.
		{"bcrypt", `{"Password":"x"}`, 400, server.CodeBadRequest},
		{"bcrypt", `{"password":"x","password":"y"}`, 400, server.CodeBadRequest},
		{"argon2id", `{"password":"x","params":{"iterations":2,"iterations":3}}`, 400, CodeBadParam},
		{"argon2id", `{"password":"x","params":{"Iterations":2}}`, 400, CodeBadParam},
		{"argon2id", `{"password":"x","params":{"iterations":2.0}}`, 400, CodeBadParam},
		{"bcrypt", "{\"password\":\"caf\xe9-secret\"}", 400, server.CodeBadRequest},
		{"bcrypt", `{"password":"caf\ud800-secret"}`, 400, server.CodeBadRequest},
		{"bcrypt", `{"password":"caf\udc00\ud800-secret"}`, 400, server.CodeBadRequest},
		{"bcrypt", `{"password":"x","params":[]}`, 400, CodeBadParam},
		{"pbkdf2", `{"password":"x"}`, 404, CodeUnknownAlgo},
		{"bcrypt", `{"pass":"x"}`, 400, server.CodeBadRequest},
		{"bcrypt", `{}`, 400, server.CodeBadRequest},
		{"bcrypt", `{"password":"x"} {}`, 400, server.CodeBadRequest},
		{"bcrypt", `not json`, 400, server.CodeBadRequest},
	} {
		_, err := run(t, "password-hash", Params{"algo": tc.algo}, []byte(tc.body))
		if !hasStatus(err, tc.status, tc.code) {
			t.Errorf("hash %s %s = %v; want %d %s", tc.algo, tc.body, err, tc.status, tc.code)
		}
	}
	// A hostile stored hash is bounded like a request.
	for _, h := range []string{
		"$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
		"$scrypt$ln=30,r=8,p=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
		"$2b$31$UF/wgDX1qHHiSRzJBRfvle61z1MeHsJYz30mS2OVjpo/SCmgN7PM6",
	} {
		body, _ := json.Marshal(map[string]string{"password": "x", "hash": h})
		if _, err := run(t, "password-verify", Params{}, body); !hasStatus(err, 422, CodeParamOutOfRange) {
			t.Errorf("verify against %s = %v; want 422 out of range", h, err)
		}
	}
	for _, h := range []string{"", "plain", "$argon2i$v=19$m=16,t=1,p=1$a$b", "$argon2id$v=19$m=x$a$b", "$scrypt$ln=10$a"} {
		body, _ := json.Marshal(map[string]string{"password": "x", "hash": h})
		if _, err := run(t, "password-verify", Params{}, body); !hasStatus(err, 422, CodeBadInput) {
			t.Errorf("verify against %q = %v; want 422 bad_input", h, err)
		}
	}
}

func TestCompressRoundTripEveryCodecAndLevel(t *testing.T) {
	input := bytes.Repeat([]byte("hybrid compresses text well. "), 4000)
	for name, c := range codecs {
		levels := []string{""}
		if c.hasLevel {
			for l := c.minLevel; l <= c.maxLvl; l++ {
				levels = append(levels, fmt.Sprint(l))
			}
		}
		for _, level := range levels {
			packed, err := run(t, "compress", Params{"codec": name, "level": level}, input)
			if err != nil {
				t.Fatalf("%s level %q: %v", name, level, err)
			}
			if len(packed) >= len(input)/4 {
				t.Errorf("%s level %q: %d → %d bytes; want real compression", name, level, len(input), len(packed))
			}
			out, err := run(t, "decompress", Params{"codec": name}, packed)
			if err != nil || !bytes.Equal(out, input) {
				t.Errorf("%s level %q: round trip = %d bytes, %v; want the input back", name, level, len(out), err)
			}
		}
	}
}

func TestCompressBadParamsAndCorruptInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Params
		st   int
		code string
	}{
		{"compress", Params{"codec": "lz4"}, 404, CodeUnknownAlgo},
		{"compress", Params{"codec": "gzip", "level": "10"}, 400, CodeBadParam},
		{"compress", Params{"codec": "zstd", "level": "fast"}, 400, CodeBadParam},
		{"compress", Params{"codec": "zstd", "level": "03"}, 400, CodeBadParam},
		{"compress", Params{"codec": "snappy", "level": "1"}, 400, CodeBadParam},
		{"decompress", Params{"codec": "gzip", "level": "1"}, 400, CodeBadParam},
	} {
		if _, err := run(t, tc.name, tc.p, []byte("x")); !hasStatus(err, tc.st, tc.code) {
			t.Errorf("%s %v = %v; want %d %s", tc.name, tc.p, err, tc.st, tc.code)
		}
	}
	for name := range codecs {
		for _, junk := range [][]byte{[]byte("definitely not compressed data"), {}, {0xff, 0xff, 0xff, 0xff}} {
			if _, err := run(t, "decompress", Params{"codec": name}, junk); !hasStatus(err, 422, CodeCorruptInput) {
				// An empty snappy/s2 stream is a valid empty stream.
				if len(junk) == 0 && err == nil {
					continue
				}
				t.Errorf("decompress %s of %q = %v; want 422 corrupt_input", name, junk, err)
			}
		}
	}
}

// A bomb: a small input that inflates past the cap is refused at the cap,
// and memory follows the cap, not the bomb.
func TestDecompressionBombIsRefused(t *testing.T) {
	const limit = 1 << 20
	zeros := make([]byte, 64<<20)
	for name := range codecs {
		bomb, err := run(t, "compress", Params{"codec": name}, zeros)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err = run(t, "decompress", Params{"codec": name, "max_output": fmt.Sprint(limit)}, bomb)
		runtime.ReadMemStats(&after)
		if !hasStatus(err, 413, CodeOutputTooLarge) {
			t.Errorf("%s bomb (%d bytes → 64 MiB) = %v; want 413 output_too_large", name, len(bomb), err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 24*limit {
			t.Errorf("%s bomb allocated %d MiB refusing a %d MiB cap", name, grew>>20, limit>>20)
		}
	}
	// A zstd frame that declares a window far beyond the cap.
	enc, _ := zstd.NewWriter(nil, zstd.WithWindowSize(1<<27))
	big := enc.EncodeAll(make([]byte, 1<<24), nil)
	if _, err := run(t, "decompress", Params{"codec": "zstd", "max_output": fmt.Sprint(limit)}, big); !hasStatus(err, 413, CodeOutputTooLarge) {
		t.Errorf("zstd with a 128 MiB window = %v; want 413", err)
	}
}

func TestParseModes(t *testing.T) {
	m, err := ParseModes("hash=inline, compress=pool", Pool)
	if err != nil || m["hash"] != Inline || m["compress"] != Pool || m["password"] != Pool {
		t.Errorf("ParseModes = %v, %v", m, err)
	}
	for _, bad := range []string{"hash", "hash=gpu", "images=pool"} {
		if _, err := ParseModes(bad, Pool); err == nil {
			t.Errorf("ParseModes(%q) = nil error", bad)
		}
	}
}

// hashResult is the shape runHash writes.
type hashResult struct {
	Algo   string `json:"algo"`
	Digest string `json:"digest"`
	Size   int    `json:"size"`
}

func TestJSONBodyIsStrictAndNeverEchoed(t *testing.T) {
	for s, want := range map[string]bool{
		`"plain"`: false, `"\ud83d\ude00"`: false, `"\\ud800"`: false, `"\"\ud800"`: true,
		`"\ud800"`: true, `"\udc00"`: true, `"\ud800\u0041"`: true, `"\ud83d"`: true, `"x\ud83d\ude00\udc00"`: true,
	} {
		if got := loneSurrogate([]byte(s)); got != want {
			t.Errorf("loneSurrogate(%s) = %v; want %v", s, got, want)
		}
	}
	// A surrogate pair is one character, and a password of it verifies.
	out, err := run(t, "password-hash", Params{"algo": "bcrypt"}, []byte(`{"password":"\ud83d\ude00"}`))
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Hash string }
	json.Unmarshal(out, &h)
	for pw, want := range map[string]string{"😀": `{"match":true}`, "😁": `{"match":false}`} {
		body, _ := json.Marshal(map[string]string{"password": pw, "hash": h.Hash})
		if out, err := run(t, "password-verify", Params{}, body); err != nil || string(out) != want {
			t.Errorf("verify %q = %s, %v; want %s", pw, out, err, want)
		}
	}
	// Long values in every place an error names one come back cut short.
	long := strings.Repeat("A", 60<<10)
	for _, body := range []string{
		`{"` + long + `":1}`,
		`{"password":"x","params":{"` + long + `":1}}`,
		`{"password":"x","params":{"cost":` + strings.Repeat("9", 60<<10) + `}}`,
		`{"password":"x","hash":"$argon2id$v=19$m=` + long + `$a$b"}`,
		`{"password":"x","hash":"$argon2id$v=` + long + `$m=1,t=1,p=1$a$b"}`,
		`{"password":"x","hash":"$scrypt$ln=` + long + `$a$b"}`,
	} {
		name := "password-hash"
		if strings.Contains(body, `"hash"`) {
			name = "password-verify"
		}
		_, err := run(t, name, Params{"algo": "bcrypt"}, []byte(body))
		if err == nil || len(err.Error()) > 300 {
			t.Errorf("%s %.60s…: error %d bytes (%.80s); want a short error", name, body, len(fmt.Sprint(err)), err)
		}
	}
}

// Each level's input cap is where its worst measured cost is about
// compressBudget (BenchmarkLargestAllowed): what a request can name costs
// at most that, whatever its bytes.
func TestCompressInputCaps(t *testing.T) {
	want := map[string]map[int]int{
		"gzip":   {6: 0, 7: 16 << 20, 8: 4 << 20, 9: 256 << 10},
		"zstd":   {3: 0, 9: 0, 10: 2 << 20, 22: 2 << 20},
		"brotli": {5: 0, 6: 16 << 20, 7: 8 << 20, 8: 4 << 20, 9: 4 << 20, 10: 1 << 20, 11: 512 << 10},
		"s2":     {1: 0, 2: 0, 3: 8 << 20},
		"snappy": {0: 0},
	}
	for name, levels := range want {
		for level, cap := range levels {
			if got := codecs[name].inputCap(level); got != cap {
				t.Errorf("%s level %d: cap %d; want %d", name, level, got, cap)
			}
		}
	}
	// The two tables agree: a capped level's worst rate at its cap stays
	// within the budget.
	for name, c := range codecs {
		for level := range c.caps {
			if n := c.inputCap(level); n > 0 && c.worst[level]*time.Duration(n>>10)/1024 > compressBudget {
				t.Errorf("%s level %d: %v a MiB over its cap of %d bytes is over the budget of %v",
					name, level, c.worst[level], n, compressBudget)
			}
		}
	}
	// Two-letter random text: gzip 9 spent ~4 s on a MiB of it.
	ab := make([]byte, 1<<20)
	for i := range ab {
		ab[i] = 'a' + byte(i*7919%13%2)
	}
	if _, err := run(t, "compress", Params{"codec": "gzip", "level": "9"}, ab); !hasStatus(err, 422, CodeParamOutOfRange) {
		t.Errorf("gzip 9 of 1 MiB: %v; want 422 param_out_of_range", err)
	}
	w, _ := Lookup("compress")
	for _, tc := range []struct {
		p     Params
		n     int
		short bool
	}{
		{Params{"codec": "gzip"}, 1 << 20, true},
		{Params{"codec": "gzip", "level": "9"}, 1 << 10, true},
		{Params{"codec": "gzip", "level": "9"}, 64 << 10, false},
		{Params{"codec": "zstd", "level": "22"}, 64 << 10, false},
		{Params{"codec": "snappy"}, 1 << 20, true},
	} {
		if got := w.Short(tc.p, tc.n); got != tc.short {
			t.Errorf("Short(%v, %d) = %v; want %v", tc.p, tc.n, got, tc.short)
		}
	}
}

// A stored hash's parameters are read exactly: a second "m=" that another
// parser would take, a sign or a leading zero is a bad hash.
func TestStoredHashParamsAreExact(t *testing.T) {
	for _, h := range []string{
		"$argon2id$v=19$m=19456,t=2,p=1,m=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
		"$argon2id$v=19$m=+19456,t=2,p=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
		"$argon2id$v=019$m=19456,t=2,p=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
		"$scrypt$ln=17,r=8,p=1,ln=1$c2FsdHNhbHQ$aKYGoKS5Dl1OzlEn1ZIXi7M2XGdxu5fG6AtewZsq6nE",
	} {
		body, _ := json.Marshal(map[string]string{"password": "x", "hash": h})
		if _, err := run(t, "password-verify", Params{}, body); !hasStatus(err, 422, CodeBadInput) {
			t.Errorf("verify against %s = %v; want 422 bad_input", h, err)
		}
	}
}

// A decompression bomb holds at most about the output limit: the buffer
// never doubles past it for the byte that tells the bomb.
func TestDecompressionBombMemoryFollowsTheLimit(t *testing.T) {
	var bomb bytes.Buffer
	zw := gzip.NewWriter(&bomb)
	zw.Write(make([]byte, 64<<20))
	zw.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := run(t, "decompress", Params{"codec": "gzip", "max_output": strconv.Itoa(8 << 20)}, bomb.Bytes())
	runtime.ReadMemStats(&after)
	if !hasStatus(err, 413, CodeOutputTooLarge) {
		t.Fatalf("bomb: %v; want 413", err)
	}
	// Doubling to the limit allocates ~2× it in all; a buffer past it 4×.
	if got := after.TotalAlloc - before.TotalAlloc; got > 3*(8<<20) {
		t.Errorf("a bomb against an 8 MiB limit allocated %d MiB", got>>20)
	}
}
