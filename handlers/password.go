package handlers

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
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
// scrypt with N=2^17, r=8, p=1; bcrypt with a work factor of 10 or more.
//
// Caller params are bounded so that one request cannot take the box down: a
// value over its bound is 422 param_out_of_range naming the bound. The same
// bounds apply to the params read from a hash given to verify, so a hostile
// hash cannot ask for 4 GiB either.
const (
	argonDefMemKiB, argonMaxMemKiB = 19 * 1024, 256 * 1024
	argonDefIter, argonMaxIter     = 2, 10
	argonDefPar, argonMaxPar       = 1, 8
	argonSaltLen, argonKeyLen      = 16, 32

	bcryptDefCost, bcryptMinCost, bcryptMaxCost = 10, 4, 14
	// bcryptMaxPassword is bcrypt's input limit. Longer passwords are refused
	// (422), never silently truncated.
	bcryptMaxPassword = 72

	scryptDefLogN, scryptMinLogN, scryptMaxLogN = 17, 10, 18
	scryptDefR, scryptMaxR                      = 8, 32
	scryptDefP, scryptMaxP                      = 1, 16
	scryptMaxMemory                             = 256 << 20 // 128·N·r bytes
	scryptSaltLen, scryptKeyLen                 = 16, 32

	maxPasswordLen = 4096
)

func init() {
	Register(&Workload{Name: "password-hash", Estimate: 100 * time.Millisecond, Group: "password", BigHeap: true, MaxReply: 4 << 10, CheckParams: checkPasswordAlgo, Check: checkPasswordHash, Run: runPasswordHash,
		ContentType: "application/json"})
	Register(&Workload{Name: "password-verify", Estimate: 100 * time.Millisecond, Group: "password", BigHeap: true, MaxReply: 4 << 10, Check: checkPasswordVerify, Run: runPasswordVerify,
		ContentType: "application/json"})
}

type hashRequest struct {
	Password *string        `json:"password"`
	Params   map[string]any `json:"params"`
}

// decodeStrict decodes one JSON object, refusing unknown fields and trailing
// data.
func decodeStrict(input []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, "body: want a JSON object: %v", err)
	}
	if dec.More() {
		return server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, "body: trailing data after the JSON object")
	}
	return nil
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

func parseHashRequest(algo string, input []byte) (string, costParams, error) {
	var req hashRequest
	if err := decodeStrict(input, &req); err != nil {
		return "", costParams{}, err
	}
	if err := checkPassword(req.Password); err != nil {
		return "", costParams{}, err
	}
	cp, err := hashParams(algo, req.Params)
	if err != nil {
		return "", costParams{}, err
	}
	if algo == "bcrypt" && len(*req.Password) > bcryptMaxPassword {
		return "", costParams{}, unprocessable(CodePasswordTooLong,
			"bcrypt takes at most %d bytes of password, got %d; use argon2id or scrypt for longer passwords",
			bcryptMaxPassword, len(*req.Password))
	}
	return *req.Password, cp, nil
}

// hashParams validates the optional "params" of a hash request.
func hashParams(algo string, raw map[string]any) (costParams, error) {
	known := map[string][]string{
		"argon2id": {"memory_kib", "iterations", "parallelism"},
		"bcrypt":   {"cost"},
		"scrypt":   {"n", "r", "p"},
	}[algo]
	if known == nil {
		return costParams{}, server.Errorf(fasthttp.StatusNotFound, CodeUnknownAlgo,
			"unknown password algorithm %q; supported: argon2id, bcrypt, scrypt", algo)
	}
	get := func(key string, def int) (int, error) {
		v, ok := raw[key]
		if !ok {
			return def, nil
		}
		num, ok := v.(json.Number)
		n, err := strconv.Atoi(string(num))
		if !ok || err != nil {
			return 0, badParam("params.%s: want an integer, got %v", key, v)
		}
		return n, nil
	}
	for k := range raw {
		if !contains(known, k) {
			return costParams{}, badParam("params.%s: unknown for %s; known: %s", k, algo, strings.Join(known, ", "))
		}
	}
	var cp costParams
	var errs []error
	must := func(n int, err error) int { errs = append(errs, err); return n }
	switch algo {
	case "argon2id":
		cp.memKiB = must(get("memory_kib", argonDefMemKiB))
		cp.iter = must(get("iterations", argonDefIter))
		cp.par = must(get("parallelism", argonDefPar))
	case "bcrypt":
		cp.cost = must(get("cost", bcryptDefCost))
	case "scrypt":
		n := must(get("n", 1<<scryptDefLogN))
		if n > 1 && n&(n-1) == 0 {
			cp.logN = bitsLen(n) - 1
		} else if err := errors.Join(errs...); err == nil {
			return cp, badParam("params.n=%d: want a power of two", n)
		}
		cp.r = must(get("r", scryptDefR))
		cp.p = must(get("p", scryptDefP))
	}
	if err := errors.Join(errs...); err != nil {
		return cp, err
	}
	return cp, boundCost(algo, cp)
}

func bitsLen(n int) int { return len(strconv.FormatInt(int64(n), 2)) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// boundCost refuses work factors that would let one request take the box.
func boundCost(algo string, cp costParams) error {
	out := func(name string, v, lo, hi int) error {
		if v < lo || v > hi {
			return unprocessable(CodeParamOutOfRange, "%s %s=%d is out of bounds: want %d to %d", algo, name, v, lo, hi)
		}
		return nil
	}
	switch algo {
	case "argon2id":
		return errors.Join(out("memory_kib", cp.memKiB, 8*cp.par, argonMaxMemKiB),
			out("iterations", cp.iter, 1, argonMaxIter), out("parallelism", cp.par, 1, argonMaxPar))
	case "bcrypt":
		return out("cost", cp.cost, bcryptMinCost, bcryptMaxCost)
	case "scrypt":
		if err := errors.Join(out("log2(n)", cp.logN, scryptMinLogN, scryptMaxLogN),
			out("r", cp.r, 1, scryptMaxR), out("p", cp.p, 1, scryptMaxP)); err != nil {
			return err
		}
		if mem := 128 << cp.logN * cp.r; mem > scryptMaxMemory {
			return unprocessable(CodeParamOutOfRange, "scrypt n·r needs %d MiB; the bound is %d MiB",
				mem>>20, scryptMaxMemory>>20)
		}
	}
	return nil
}

func checkPasswordAlgo(p Params) error {
	_, err := hashParams(p["algo"], nil)
	return err
}

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

type verifyRequest struct {
	Password *string `json:"password"`
	Hash     *string `json:"hash"`
}

// parsedHash is a stored hash, its algorithm and work factors read from it.
type parsedHash struct {
	algo      string
	cp        costParams
	salt, key []byte
	raw       string
}

func parseVerifyRequest(input []byte) (string, parsedHash, error) {
	var req verifyRequest
	if err := decodeStrict(input, &req); err != nil {
		return "", parsedHash{}, err
	}
	if err := checkPassword(req.Password); err != nil {
		return "", parsedHash{}, err
	}
	if req.Hash == nil {
		return "", parsedHash{}, server.Errorf(fasthttp.StatusBadRequest, server.CodeBadRequest, `body: "hash" is required`)
	}
	ph, err := parseStoredHash(*req.Hash)
	if err != nil {
		return "", parsedHash{}, err
	}
	return *req.Password, ph, nil
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
		if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
			return ph, badHash("argon2id: unsupported version %q", parts[2])
		}
		if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &ph.cp.memKiB, &ph.cp.iter, &ph.cp.par); err != nil {
			return ph, badHash("argon2id: bad parameters %q", parts[3])
		}
		if err := ph.saltAndKey(parts[4], parts[5]); err != nil {
			return ph, err
		}
	case len(h) == 60 && (strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$")):
		ph.algo = "bcrypt"
		cost, err := strconv.Atoi(h[4:6])
		if err != nil || h[6] != '$' {
			return ph, badHash("bcrypt: bad cost %q", h[4:6])
		}
		ph.cp.cost = cost
	case strings.HasPrefix(h, "$scrypt$"):
		ph.algo = "scrypt"
		parts := strings.Split(h, "$")
		if len(parts) != 5 {
			return ph, badHash("scrypt: want $scrypt$ln=…,r=…,p=…$salt$key")
		}
		if _, err := fmt.Sscanf(parts[2], "ln=%d,r=%d,p=%d", &ph.cp.logN, &ph.cp.r, &ph.cp.p); err != nil {
			return ph, badHash("scrypt: bad parameters %q", parts[2])
		}
		if err := ph.saltAndKey(parts[3], parts[4]); err != nil {
			return ph, err
		}
	default:
		return ph, badHash("unrecognised format; supported: $argon2id$…, $2a$/$2b$/$2y$… (bcrypt), $scrypt$…")
	}
	return ph, boundCost(ph.algo, ph.cp)
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
