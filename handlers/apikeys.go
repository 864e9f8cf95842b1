package handlers

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/hybrid-server/hybrid/ratelimit"
)

// APIKey is one client's key, as --api-keys lists it.
type APIKey struct {
	// Name identifies the client in logs, metrics and rate limits: never the
	// key itself. Default: "key-" and the first 8 hex digits of the key's
	// SHA-256.
	Name string
	// Rule is the client's own rate limit; zero: --rate-limit's.
	Rule ratelimit.Rule
	// HasRule is set when the file names a limit (limit=off included).
	HasRule bool
	secret  []byte
}

// APIKeys are the keys of --api-keys, looked up by their SHA-256.
type APIKeys struct {
	byDigest map[[32]byte]*APIKey
	names    []string
	raw      []byte // the file as it was parsed
}

// Raw is the file's contents as parsed: what a primary passes its workers.
func (ks *APIKeys) Raw() []byte { return ks.raw }

// MinKeyLen is the shortest key accepted: 16 bytes of a random key is
// more than 2^90 guesses.
const MinKeyLen = 16

// maxKeysFile bounds the file: a million keys of 64 bytes.
const maxKeysFile = 64 << 20

// LoadAPIKeys reads --api-keys: one key per line, then optional fields
//
//	KEY [name=NAME] [limit=100/min|off] [burst=N]
//
// Blank lines and lines starting with # are skipped. A key is 16 to 256
// printable ASCII bytes without spaces. An error names the line, never the
// key.
func LoadAPIKeys(path string) (*APIKeys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("api keys: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %w", path, err)
	}
	if len(data) > maxKeysFile {
		return nil, fmt.Errorf("api keys %s: over %d MiB", path, maxKeysFile>>20)
	}
	keys, err := ParseAPIKeys(data)
	if err != nil {
		return nil, fmt.Errorf("api keys %s: %w", path, err)
	}
	return keys, nil
}

// ParseAPIKeys parses the --api-keys format (see LoadAPIKeys).
func ParseAPIKeys(data []byte) (*APIKeys, error) {
	ks := &APIKeys{byDigest: map[[32]byte]*APIKey{}, raw: data}
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		fields := strings.Fields(text)
		secret := fields[0]
		if len(secret) < MinKeyLen || len(secret) > 256 || !printable(secret) {
			return nil, fmt.Errorf("line %d: a key is %d to 256 printable ASCII bytes", line, MinKeyLen)
		}
		digest := sha256.Sum256([]byte(secret))
		k := &APIKey{Name: "key-" + hex.EncodeToString(digest[:4]), secret: []byte(secret)}
		burst := 0
		for i, f := range fields[1:] {
			name, v, ok := strings.Cut(f, "=")
			var err error
			switch {
			case !ok:
				// Never quoted: it may be a key in the wrong place.
				err = fmt.Errorf("field %d: want name=value", i+2)
			case name == "name":
				if v == "" || len(v) > 64 || !printable(v) || strings.ContainsAny(v, `"\`) {
					err = fmt.Errorf("name: 1 to 64 printable ASCII bytes")
				}
				k.Name = v
			case name == "limit":
				k.HasRule = true
				if v != "off" {
					k.Rule, err = ratelimit.ParseRule(v)
				}
			case name == "burst":
				if burst, err = strconv.Atoi(v); err != nil || burst < 1 || burst > ratelimit.MaxCount {
					err = fmt.Errorf("burst: want 1 to %d", ratelimit.MaxCount)
				}
			default:
				err = fmt.Errorf("field %d: unknown; want name=, limit= or burst=", i+2)
			}
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
		}
		if burst > 0 {
			if k.Rule.Off() {
				return nil, fmt.Errorf("line %d: burst= needs limit=", line)
			}
			k.Rule.Burst = burst
		}
		if _, dup := ks.byDigest[digest]; dup {
			return nil, fmt.Errorf("line %d: the key of an earlier line again", line)
		}
		if names[k.Name] {
			return nil, fmt.Errorf("line %d: name %s taken by an earlier line", line, strconv.Quote(k.Name))
		}
		names[k.Name] = true
		ks.byDigest[digest] = k
		ks.names = append(ks.names, k.Name)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(ks.byDigest) == 0 {
		return nil, fmt.Errorf("no keys: a file that lists none would refuse every request")
	}
	return ks, nil
}

func printable(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// Len is the number of keys.
func (ks *APIKeys) Len() int { return len(ks.byDigest) }

// lookup finds the key presented. The map is keyed by the SHA-256 of the
// key, so its lookup time depends on a digest the client cannot steer, not
// on how much of a real key it guessed; the final comparison is constant
// time as well.
func (ks *APIKeys) lookup(presented []byte) *APIKey {
	k := ks.byDigest[sha256.Sum256(presented)]
	if k == nil || subtle.ConstantTimeCompare(k.secret, presented) != 1 {
		return nil
	}
	return k
}
