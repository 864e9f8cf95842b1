package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/hybrid-server/hybrid/server"
)

// envName is the environment variable that mirrors a flag: --max-body is
// HYBRID_MAX_BODY. Every flag has one, so containers need no command line.
func envName(flagName string) string {
	return "HYBRID_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command line
// from its environment variable, and those not in the environment from the
// configuration file (--config or HYBRID_CONFIG, where fs has that flag;
// see config.go). The command line wins over the environment, which wins
// over the file, which wins over the default.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	// Each source is applied over the one below it: the file sets every
	// flag it names (so that each of its lines is checked), the environment
	// the flags not given, and the command line, parsed again, its own.
	path := configPath(fs, given)
	if path != "" {
		if err := applyConfigFile(fs, path); err != nil {
			return err
		}
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		name := envName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("invalid %s=%s: %s", name, server.Quote(v), refusal(err, v)))
			}
		}
	})
	if path != "" {
		_ = fs.Parse(args) // parsed once already: cannot fail
	}
	return errors.Join(errs...)
}

// parseFlagsArgs is parseFlags for a command that also takes positional
// arguments, before, between or after its flags (hybrid scale 4
// --admin-addr …): it returns them, in order.
func parseFlagsArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		flags = append(flags, args[:len(args)-len(rest)]...)
		if len(rest) > 0 {
			pos, rest = append(pos, rest[0]), rest[1:]
		}
		args = rest
	}
	return pos, parseFlags(fs, flags)
}

// sizeFlag is a byte size: 1048576, 512KiB, 32MiB, 1GiB, 10MB (decimal).
type sizeFlag struct{ p *uint64 }

func (s sizeFlag) String() string {
	if s.p == nil {
		return "0"
	}
	return formatSize(*s.p)
}

func (s sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.p = n
	return nil
}

var sizeUnits = map[string]uint64{
	"": 1, "b": 1,
	"k": 1 << 10, "kib": 1 << 10, "kb": 1000,
	"m": 1 << 20, "mib": 1 << 20, "mb": 1000 * 1000,
	"g": 1 << 30, "gib": 1 << 30, "gb": 1000 * 1000 * 1000,
}

func parseSize(v string) (uint64, error) {
	v = strings.TrimSpace(v)
	i := strings.IndexFunc(v, func(r rune) bool { return !unicode.IsDigit(r) })
	if i < 0 {
		i = len(v)
	}
	if i == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)", v)
	}
	n, err := strconv.ParseUint(v[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", v, err)
	}
	unit, ok := sizeUnits[strings.ToLower(strings.TrimSpace(v[i:]))]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB, KB, MB, GB)", v, v[i:])
	}
	if n > (1<<63)/unit {
		return 0, fmt.Errorf("size %q: too large", v)
	}
	return n * unit, nil
}

func formatSize(n uint64) string {
	switch {
	case n == 0:
		return "0"
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.FormatUint(n, 10)
}
