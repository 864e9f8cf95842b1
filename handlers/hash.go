package handlers

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"hash/crc32"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
	"github.com/zeebo/xxh3"
	"golang.org/x/crypto/blake2b"
	"lukechampine.com/blake3"
)

// hashAlgos are one-shot digests. Implementations, measured on 1 MiB (see
// bench/RESULTS.md): the standard library for SHA-2 (SHA-NI), SHA-1, MD5 and
// CRC-32C (SSE4.2); x/crypto/blake2b (AVX2); lukechampine.com/blake3 (AVX-512
// /AVX2, the fastest pure-Go BLAKE3); github.com/zeebo/xxh3 (AVX2, the fastest
// pure-Go XXH3). MD5 and SHA-1 are for checksums, not security.
var hashAlgos = map[string]func([]byte) []byte{
	"sha256": func(b []byte) []byte { s := sha256.Sum256(b); return s[:] },
	"sha512": func(b []byte) []byte { s := sha512.Sum512(b); return s[:] },
	"sha1":   func(b []byte) []byte { s := sha1.Sum(b); return s[:] },
	"md5":    func(b []byte) []byte { s := md5.Sum(b); return s[:] },
	"blake2b-256": func(b []byte) []byte {
		s := blake2b.Sum256(b)
		return s[:]
	},
	"blake2b-512": func(b []byte) []byte { s := blake2b.Sum512(b); return s[:] },
	"blake3":      func(b []byte) []byte { s := blake3.Sum256(b); return s[:] },
	"xxh3-64":     func(b []byte) []byte { return binary.BigEndian.AppendUint64(nil, xxh3.Hash(b)) },
	"crc32c": func(b []byte) []byte {
		return binary.BigEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
	},
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// HashAlgos lists the supported digests, sorted.
func HashAlgos() []string {
	return slices.Sorted(maps.Keys(hashAlgos))
}

func init() {
	Register(&Workload{Name: "hash", Estimate: time.Millisecond, Group: "hash", MaxReply: 4 << 10, CheckParams: checkHash, Run: runHash, ContentType: "application/json",
		Short: func(_ Params, n int) bool { return n < shortInput }})
}

func checkHash(p Params) error {
	if _, ok := hashAlgos[p["algo"]]; !ok {
		return server.Errorf(fasthttp.StatusNotFound, CodeUnknownAlgo, "unknown hash algorithm %s; supported: %s",
			server.Quote(p["algo"]), strings.Join(HashAlgos(), ", "))
	}
	switch p["encoding"] {
	case "", "hex", "base64":
		return nil
	}
	return badParam("encoding=%s: want hex or base64", server.Quote(p["encoding"]))
}

// runHash returns {"algo":…,"digest":…,"size":…}. Digests of xxh3-64 and
// crc32c are their integer value in big-endian bytes, as xxhsum and crc32c
// tools print them. The JSON is appended by hand, in one allocation: algo is
// one of the known names (checkHash) and a digest is hex or base64, so
// neither needs escaping.
func runHash(_ context.Context, p Params, input []byte) ([]byte, error) {
	algo := p["algo"]
	sum := hashAlgos[algo](input)
	b := make([]byte, 0, 48+len(algo)+base64.StdEncoding.EncodedLen(len(sum))+hex.EncodedLen(len(sum)))
	b = append(append(append(b, `{"algo":"`...), algo...), `","digest":"`...)
	if p["encoding"] == "base64" {
		b = base64.StdEncoding.AppendEncode(b, sum)
	} else {
		b = hex.AppendEncode(b, sum)
	}
	b = strconv.AppendInt(append(b, `","size":`...), int64(len(input)), 10)
	return append(b, '}'), nil
}
