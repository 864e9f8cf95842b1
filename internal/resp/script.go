package resp

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
)

// Script is a Lua script run by its SHA-1 (EVALSHA), sent whole (EVAL,
// which also loads it) only when the server has not got it.
type Script struct {
	src, sha string
}

// NewScript returns the script of src.
func NewScript(src string) *Script {
	h := sha1.Sum([]byte(src))
	return &Script{src: src, sha: hex.EncodeToString(h[:])}
}

// SHA1 is the script's hash in hex, as EVALSHA and SCRIPT EXISTS take it.
func (s *Script) SHA1() string { return s.sha }

// Run runs the script on c with keys (KEYS) and args (ARGV): EVALSHA, then
// EVAL on a NOSCRIPT error (a server restarted, or another one).
func (s *Script) Run(ctx context.Context, c Doer, keys []string, args ...any) (Value, error) {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, "EVALSHA", s.sha, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	a = append(a, args...)
	v, err := c.Do(ctx, a...)
	if e := (*Error)(nil); errors.As(err, &e) && e.Code() == "NOSCRIPT" {
		a[0], a[1] = "EVAL", s.src
		return c.Do(ctx, a...)
	}
	return v, err
}
