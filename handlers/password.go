package handlers

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/crypto/scrypt"
)

// Password hashing defaults follow the OWASP Password Storage Cheat Sheet
// (https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html):
// Argon2id with 19 MiB of memory, 2 iterations and 1 degree of parallelism;
// scrypt with N=2^17, r=8, p=1; bcrypt with a work factor of 10.
//
// The work a request can name is bounded both ways, in one place
// (boundCost), for hash requests and for the hashes given to verify, so a
// 150-byte body cannot ask for seconds of CPU or GiBs:
//
//   - at most: argon2id memory × iterations ≤ 1 GiB·pass (≈ 27× the
//     default), memory ≤ 256 MiB; scrypt N·r·p ≤ 2^21 (2× the default) and
//     128·N·r ≤ 256 MiB; bcrypt cost ≤ 14. Each is about half a second of
//     one core here (bench/RESULTS.md), and 422 param_out_of_range beyond.
//   - at least, for a new hash (OWASP's weakest equivalent settings):
//     argon2id memory ≥ 7 MiB and memory × iterations ≥ 35 MiB·pass
//     (7 MiB × 5, …, 19 MiB × 2, 46 MiB × 1); scrypt 128·N·r ≥ 8 MiB and
//     N·r·p ≥ 655,360 (2^13 × 8 × 10); bcrypt cost ≥ 10. A stored hash
//     below them still verifies: it was made before, and checking it costs
//     less, not more.
//
// Passwords are bytes: the UTF-8 of the JSON string. A body that is not
// valid UTF-8, or a string with a lone surrogate escape, is a 400, never a
// lossy U+FFFD (jsonbody.go).
const (
	argonDefMemKiB, argonMaxMemKiB = 19 * 1024, 256 * 1024
	argonDefIter, argonMaxIter     = 2, 10
	argonDefPar, argonMaxPar       = 1, 8
	argonMaxWork                   = 1 << 20 // KiB × iterations
	argonMinMemKiB, argonMinWork   = 7 * 1024, 35 * 1024
	argonSaltLen, argonKeyLen      = 16, 32

	bcryptDefCost, bcryptMinCost, bcryptMaxCost = 10, 4, 14
	bcryptMinNewCost                            = 10
	// bcryptMaxPassword is bcrypt's input limit. Longer passwords are refused
	// (422), never silently truncated.
	bcryptMaxPassword = 72

	scryptDefLogN, scryptMinLogN, scryptMaxLogN = 17, 10, 18
	scryptDefR, scryptMaxR                      = 8, 32
	scryptDefP, scryptMaxP                      = 1, 16
	scryptMaxMemory                             = 256 << 20 // 128·N·r bytes
	scryptMaxWork                               = 1 << 21   // N·r·p
	scryptMinNewMemory, scryptMinNewWork        = 8 << 20, 655_360
	scryptSaltLen, scryptKeyLen                 = 16, 32

	maxPasswordLen = 4096
)

func init() {
	Register(&Workload{Name: "password-hash", Estimate: 100 * time.Millisecond, Group: "password", BigHeap: true, MaxReply: 4 << 10, MaxBody: jsonBodyLimit,
		CheckParams: checkPasswordAlgo, Check: checkPasswordHash, Run: runPasswordHash, ContentType: "application/json"})
	Register(&Workload{Name: "password-verify", Estimate: 100 * time.Millisecond, Group: "password", BigHeap: true, MaxReply: 4 << 10, MaxBody: jsonBodyLimit,
		Check: checkPasswordVerify, Run: runPasswordVerify, ContentType: "application/json"})
}

func checkPassword(pw *string) error {
	switch {
	case pw == nil:
		return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, `body: "password" is required`)
	case len(*pw) > maxPasswordLen:
		return unprocessable(CodePasswordTooLong, "password is %d bytes; the limit is %d", len(*pw), maxPasswordLen)
	}
	return nil
}

// costParams are the parsed work factors of one algorithm.
type costParams struct {
	memKiB, iter, par int // argon2id
	cost              int // bcrypt
	logN, r, p        int // scrypt
}

// parseHashRequest reads {"password": "…", "params": {…}}.
func parseHashRequest(algo string, input []byte) (string, costParams, error) {
	if err := passwordAlgo(algo); err != nil {
		return "", costParams{}, err
	}
	var pw *string
	var rawParams json.RawMessage
	err := decodeObject("body", server.CodeBadRequest, input, map[string]jsonField{
		"password": stringField("body", "password", &pw),
		"params":   func(raw json.RawMessage) error { rawParams = raw; return nil },
	})
	if err == nil {
		err = checkPassword(pw)
	}
	if err != nil {
		return "", costParams{}, err
	}
	cp, err := hashParams(algo, rawParams)
	if err != nil {
		return "", costParams{}, err
	}
	if algo == "bcrypt" && len(*pw) > bcryptMaxPassword {
		return "", costParams{}, unprocessable(CodePasswordTooLong,
			"bcrypt takes at most %d bytes of password, got %d; use argon2id or scrypt for longer passwords",
			bcryptMaxPassword, len(*pw))
	}
	return *pw, cp, nil
}

func passwordAlgo(algo string) error {
	switch algo {
	case "argon2id", "bcrypt", "scrypt":
		return nil
	}
	return server.Errorf(fasthttp.StatusNotFound, CodeUnknownAlgo,
		"unknown password algorithm %s; supported: argon2id, bcrypt, scrypt", server.Quote(algo))
}

// hashParams reads the optional "params" object of a hash request (raw is
// nil when absent): the algorithm's defaults, overridden field by field,
// within the bounds for a new hash.
func hashParams(algo string, raw json.RawMessage) (costParams, error) {
	cp := costParams{memKiB: argonDefMemKiB, iter: argonDefIter, par: argonDefPar, cost: bcryptDefCost,
		logN: scryptDefLogN, r: scryptDefR, p: scryptDefP}
	n := 1 << scryptDefLogN
	fields := map[string]map[string]jsonField{
		"argon2id": {"memory_kib": intField("params", "memory_kib", &cp.memKiB),
			"iterations": intField("params", "iterations", &cp.iter), "parallelism": intField("params", "parallelism", &cp.par)},
		"bcrypt": {"cost": intField("params", "cost", &cp.cost)},
		"scrypt": {"n": intField("params", "n", &n), "r": intField("params", "r", &cp.r), "p": intField("params", "p", &cp.p)},
	}[algo]
	if raw != nil {
		if err := decodeObject("params", CodeBadParam, raw, fields); err != nil {
			return cp, err
		}
	}
	if algo == "scrypt" {
		if n < 2 || n&(n-1) != 0 {
			return cp, badParam("params.n=%d: want a power of two", n)
		}
		cp.logN = bits.Len(uint(n)) - 1
	}
	return cp, boundCost(algo, cp, true)
}

// boundCost refuses work factors that would let one request take the box,
// and, for a new hash, those below OWASP's minimums (see the constants).
func boundCost(algo string, cp costParams, newHash bool) error {
	out := func(name string, v, lo, hi int) error {
		if v < lo || v > hi {
			return unprocessable(CodeParamOutOfRange, "%s %s=%d is out of bounds: want %d to %d", algo, name, v, lo, hi)
		}
		return nil
	}
	switch algo {
	case "argon2id":
		if err := errors.Join(out("memory_kib", cp.memKiB, 8*cp.par, argonMaxMemKiB),
			out("iterations", cp.iter, 1, argonMaxIter), out("parallelism", cp.par, 1, argonMaxPar)); err != nil {
			return err
		}
		work := cp.memKiB * cp.iter
		if newHash {
			if err := out("memory_kib", cp.memKiB, argonMinMemKiB, argonMaxMemKiB); err != nil {
				return err
			}
		}
		return outWork(algo, "memory_kib × iterations", work, argonMinWork, argonMaxWork, newHash)
	case "bcrypt":
		if newHash {
			return out("cost", cp.cost, bcryptMinNewCost, bcryptMaxCost)
		}
		return out("cost", cp.cost, bcryptMinCost, bcryptMaxCost)
	case "scrypt":
		if err := errors.Join(out("log2(n)", cp.logN, scryptMinLogN, scryptMaxLogN),
			out("r", cp.r, 1, scryptMaxR), out("p", cp.p, 1, scryptMaxP)); err != nil {
			return err
		}
		mem := 128 << cp.logN * cp.r
		if mem > scryptMaxMemory || newHash && mem < scryptMinNewMemory {
			return unprocessable(CodeParamOutOfRange, "scrypt 128·n·r is %d MiB; want %d to %d MiB",
				mem>>20, scryptMinNewMemory>>20, scryptMaxMemory>>20)
		}
		return outWork(algo, "n·r·p", (1<<cp.logN)*cp.r*cp.p, scryptMinNewWork, scryptMaxWork, newHash)
	}
	return nil
}

// outWork bounds an algorithm's total work: above max always, below min
// only for a new hash.
func outWork(algo, name string, work, lo, hi int, newHash bool) error {
	switch {
	case work > hi:
		return unprocessable(CodeParamOutOfRange, "%s %s = %d exceeds the bound of %d", algo, name, work, hi)
	case newHash && work < lo:
		return unprocessable(CodeParamOutOfRange, "%s %s = %d is below the minimum of %d for a new hash (OWASP)",
			algo, name, work, lo)
	}
	return nil
}

func checkPasswordAlgo(p Params) error { return passwordAlgo(p["algo"]) }

func checkPasswordHash(p Params, input []byte) error {
	_, _, err := parseHashRequest(p["algo"], input)
	return err
}

func runPasswordHash(_ context.Context, p Params, input []byte) ([]byte, error) {
	pw, cp, err := parseHashRequest(p["algo"], input)
	if err != nil {
		return nil, err
	}
	var h string
	switch p["algo"] {
	case "argon2id":
		salt := randomBytes(argonSaltLen)
		key := argon2.IDKey([]byte(pw), salt, uint32(cp.iter), uint32(cp.memKiB), uint8(cp.par), argonKeyLen)
		h = fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, cp.memKiB, cp.iter, cp.par, b64(salt), b64(key))
	case "bcrypt":
		b, err := bcrypt.GenerateFromPassword([]byte(pw), cp.cost)
		if err != nil {
			return nil, fmt.Errorf("handlers: bcrypt: %w", err)
		}
		// x/crypto writes $2a$; for passwords within 72 bytes (all it
		// accepts) that is the $2b$ algorithm, the current identifier.
		h = "$2b$" + strings.TrimPrefix(string(b), "$2a$")
	case "scrypt":
		salt := randomBytes(scryptSaltLen)
		key, err := scrypt.Key([]byte(pw), salt, 1<<cp.logN, cp.r, cp.p, scryptKeyLen)
		if err != nil {
			return nil, fmt.Errorf("handlers: scrypt: %w", err)
		}
		// The PHC-style form passlib uses: $scrypt$ln=17,r=8,p=1$salt$key.
		h = fmt.Sprintf("$scrypt$ln=%d,r=%d,p=%d$%s$%s", cp.logN, cp.r, cp.p, b64(salt), b64(key))
	}
	return json.Marshal(map[string]string{"hash": h})
}

// parsedHash is a stored hash, its algorithm and work factors read from it.
type parsedHash struct {
	algo      string
	cp        costParams
	salt, key []byte
	raw       string
}

// parseVerifyRequest reads {"password": "…", "hash": "…"}.
func parseVerifyRequest(input []byte) (string, parsedHash, error) {
	var pw, hash *string
	err := decodeObject("body", server.CodeBadRequest, input, map[string]jsonField{
		"password": stringField("body", "password", &pw),
		"hash":     stringField("body", "hash", &hash),
	})
	if err == nil {
		err = checkPassword(pw)
	}
	if err != nil {
		return "", parsedHash{}, err
	}
	if hash == nil {
		return "", parsedHash{}, server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, `body: "hash" is required`)
	}
	ph, err := parseStoredHash(*hash)
	if err != nil {
		return "", parsedHash{}, err
	}
	return *pw, ph, nil
}

func badHash(format string, args ...any) error {
	return unprocessable(CodeBadInput, "hash: "+format, args...)
}

// parseStoredHash reads a PHC argon2id string, a $2a$/$2b$/$2y$ bcrypt string
// or a $scrypt$ string, and bounds its work factors.
func parseStoredHash(h string) (parsedHash, error) {
	ph := parsedHash{raw: h}
	switch {
	case strings.HasPrefix(h, "$argon2id$"):
		ph.algo = "argon2id"
		var v int
		parts := strings.Split(h, "$")
		if len(parts) != 6 {
			return ph, badHash("argon2id: want $argon2id$v=19$m=…,t=…,p=…$salt$key")
		}
		if !scanExactly(parts[2], "v=%d", &v) || v != argon2.Version {
			return ph, badHash("argon2id: unsupported version %s", server.Quote(parts[2]))
		}
		if !scanExactly(parts[3], "m=%d,t=%d,p=%d", &ph.cp.memKiB, &ph.cp.iter, &ph.cp.par) {
			return ph, badHash("argon2id: bad parameters %s", server.Quote(parts[3]))
		}
		if err := ph.saltAndKey(parts[4], parts[5]); err != nil {
			return ph, err
		}
	case len(h) == 60 && (strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")):
		ph.algo = "bcrypt"
		cost, err := strconv.Atoi(h[4:6])
		if err != nil || h[6] != '$' {
			return ph, badHash("bcrypt: bad cost %s", server.Quote(h[4:6]))
		}
		ph.cp.cost = cost
	case strings.HasPrefix(h, "$scrypt$"):
		ph.algo = "scrypt"
		parts := strings.Split(h, "$")
		if len(parts) != 5 {
			return ph, badHash("scrypt: want $scrypt$ln=…,r=…,p=…$salt$key")
		}
		if !scanExactly(parts[2], "ln=%d,r=%d,p=%d", &ph.cp.logN, &ph.cp.r, &ph.cp.p) {
			return ph, badHash("scrypt: bad parameters %s", server.Quote(parts[2]))
		}
		if err := ph.saltAndKey(parts[3], parts[4]); err != nil {
			return ph, err
		}
	default:
		return ph, badHash("unrecognised format; supported: $argon2id$…, $2a$/$2b$/$2y$… (bcrypt), $scrypt$…")
	}
	return ph, boundCost(ph.algo, ph.cp, false)
}

// scanExactly parses s with format (of %d verbs only) and reports whether s
// is exactly what format prints for the values read: no trailing field (a
// second "m=" that another parser would read), no sign, no leading zero.
func scanExactly(s, format string, vals ...*int) bool {
	args := make([]any, len(vals))
	for i, v := range vals {
		args[i] = v
	}
	if _, err := fmt.Sscanf(s, format, args...); err != nil {
		return false
	}
	for i, v := range vals {
		args[i] = *v
	}
	return fmt.Sprintf(format, args...) == s
}

// saltAndKey decodes the base64 salt and key of a stored hash.
func (ph *parsedHash) saltAndKey(salt, key string) error {
	var err1, err2 error
	ph.salt, err1 = unb64(salt)
	ph.key, err2 = unb64(key)
	if err1 != nil || err2 != nil || len(ph.salt) < 8 || len(ph.key) < 16 || len(ph.key) > 64 {
		return badHash("%s: bad salt or key encoding", ph.algo)
	}
	return nil
}

func checkPasswordVerify(_ Params, input []byte) error {
	_, _, err := parseVerifyRequest(input)
	return err
}

func runPasswordVerify(_ context.Context, _ Params, input []byte) ([]byte, error) {
	pw, ph, err := parseVerifyRequest(input)
	if err != nil {
		return nil, err
	}
	var match bool
	switch ph.algo {
	case "argon2id":
		key := argon2.IDKey([]byte(pw), ph.salt, uint32(ph.cp.iter), uint32(ph.cp.memKiB), uint8(ph.cp.par), uint32(len(ph.key)))
		match = subtle.ConstantTimeCompare(key, ph.key) == 1
	case "bcrypt":
		if len(pw) > bcryptMaxPassword {
			return nil, unprocessable(CodePasswordTooLong, "bcrypt takes at most %d bytes of password, got %d",
				bcryptMaxPassword, len(pw))
		}
		// CompareHashAndPassword compares in constant time.
		err := bcrypt.CompareHashAndPassword([]byte(ph.raw), []byte(pw))
		if err != nil && !errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
			return nil, badHash("bcrypt: %v", err)
		}
		match = err == nil
	case "scrypt":
		key, err := scrypt.Key([]byte(pw), ph.salt, 1<<ph.cp.logN, ph.cp.r, ph.cp.p, len(ph.key))
		if err != nil {
			return nil, badHash("scrypt: %v", err)
		}
		match = subtle.ConstantTimeCompare(key, ph.key) == 1
	}
	return json.Marshal(map[string]bool{"match": match})
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	return b
}

func b64(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

func unb64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}
