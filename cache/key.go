package cache

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"io"
	"slices"
	"sync"

	"lukechampine.com/blake3"
)

// Key is a result's address: a digest of the workload's name, its canonical
// params and its input ([NewKey]). Equal keys mean equal requests, so a
// stored result may be served for any request with that key.
type Key [32]byte

// keyDomain opens every encoding NewKey hashes. It names the encoding's
// version: a change to the encoding changes the domain, so keys made by an
// older binary (in Redis, shared by hosts running different versions) can
// never address a result under the new encoding.
const keyDomain = "hybrid/cache/key/v1\x00"

// NewKey returns the address of the result of running workload on input
// with params. It hashes, with BLAKE3, an encoding that no two different
// requests share:
//
//	domain   "hybrid/cache/key/v1\x00"
//	name     u64 length, bytes
//	params   u64 count, then for each param in ascending key order:
//	         u64 key length, key bytes, u64 value length, value bytes
//	input    u64 length, bytes
//
// (u64: 8 bytes big-endian.) Every field is length-prefixed, so no shift of
// bytes between fields (name "ab" + param "c" against name "a" + param
// "bc") yields the same encoding, and params are sorted, so the order the
// caller built its map in does not matter. The caller passes canonical
// params: those that change the result, each spelled one way ("q=80", not
// "q=080"); two spellings of one request are two keys, a harmless miss.
//
// Why BLAKE3: a collision would serve one client another client's result,
// so the digest must be collision-resistant against an adversary who
// chooses inputs, which rules out xxh3 and its kind; among the digests
// that are, BLAKE3 is the fast one, and the key of a large upload is
// computed on the request path before the cache can answer. Measured on
// the build box (BenchmarkNewKey, 3.6 MB input): 0.6–0.9 ms on one core
// against 1.75 ms for SHA-256, which there runs on the CPU's SHA
// extensions (without them SHA-256 is several times slower still). 256
// bits leave a collision probability of about n²/2²⁵⁷ for n stored
// results: none.
//
// Threading: lukechampine.com/blake3 hashes a large input's 16 KiB
// subtrees on goroutines of its own (about 220 for 3.6 MB), so one key
// spreads over the process's Ps for its fraction of a millisecond (0.5–0.65
// ms at GOMAXPROCS=2 on the build box), outside any bound the caller keeps
// on the tasks running at once.
func NewKey(workload string, params map[string]string, input []byte) Key {
	h := hashers.Get().(*blake3.Hasher)
	h.Reset()
	writeKey(h, workload, params, input)
	var k Key
	h.Sum(k[:0])
	hashers.Put(h)
	return k
}

// hashers keeps BLAKE3 states (3 KiB each) for reuse.
var hashers = sync.Pool{New: func() any { return blake3.New(32, nil) }}

// writeKey writes NewKey's encoding to h; BenchmarkNewKey runs it into
// SHA-256 as well, to compare the digests on one encoding.
func writeKey(h io.Writer, workload string, params map[string]string, input []byte) {
	var buf [8]byte
	u64 := func(n int) {
		binary.BigEndian.PutUint64(buf[:], uint64(n))
		h.Write(buf[:])
	}
	str := func(s string) {
		u64(len(s))
		io.WriteString(h, s)
	}
	io.WriteString(h, keyDomain)
	str(workload)
	u64(len(params))
	if len(params) > 0 {
		names := make([]string, 0, len(params))
		for name := range params {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			str(name)
			str(params[name])
		}
	}
	u64(len(input))
	h.Write(input)
}

// String is the key in hex, as Redis names it (after the prefix).
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// etagBytes is how much of the key an entity tag carries: 192 bits, so an
// accidental match of two tags is as unlikely as a collision of the keys
// themselves, in 32 characters instead of 43.
const etagBytes = 24

// ETag returns a strong entity tag for the result stored under k, quoted:
// `"` + base64url (no padding) of the key's first 24 bytes + `"`. Equal
// keys address byte-identical results, which is what a strong tag
// promises (RFC 9110 §8.8.3); the caller sends it only for results that
// are deterministic, the only ones it caches.
func (k Key) ETag() string {
	var b [2 + 32]byte // base64 of 24 bytes is 32 characters
	b[0] = '"'
	base64.RawURLEncoding.Encode(b[1:33], k[:etagBytes])
	b[33] = '"'
	return string(b[:])
}

// MatchETag reports whether an If-None-Match field value matches etag, by
// RFC 9110 §13.1.2: "*" matches any current representation; otherwise the
// field is a comma-separated list of entity tags, compared with the weak
// comparison (a "W/" prefix on either side is ignored, the quoted
// opaque-tags must be equal byte for byte). Whitespace around elements and
// empty elements are skipped. A malformed list (an element that is not a
// quoted tag) matches nothing from the malformed element on, which answers
// 200 with the body: always safe.
//
// The work is linear in len(ifNoneMatch), each byte looked at a bounded
// number of times whatever the header holds, and nothing is allocated:
// the field comes from the client.
func MatchETag(ifNoneMatch []byte, etag string) bool {
	etag = trimWeak(etag)
	s := ifNoneMatch
	for {
		for len(s) > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == ',') {
			s = s[1:]
		}
		if len(s) == 0 {
			return false
		}
		var tag []byte
		if s[0] == '*' {
			tag, s = s[:1], s[1:]
		} else {
			if len(s) >= 2 && s[0] == 'W' && s[1] == '/' {
				s = s[2:]
			}
			if len(s) == 0 || s[0] != '"' {
				return false
			}
			end := bytes.IndexByte(s[1:], '"')
			if end < 0 {
				return false
			}
			tag, s = s[:end+2], s[end+2:]
		}
		for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
			s = s[1:]
		}
		if len(s) > 0 && s[0] != ',' {
			return false
		}
		if len(tag) == 1 && tag[0] == '*' || string(tag) == etag {
			return true
		}
	}
}

func trimWeak(etag string) string {
	if len(etag) >= 2 && etag[0] == 'W' && etag[1] == '/' {
		return etag[2:]
	}
	return etag
}
