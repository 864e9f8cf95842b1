package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
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
//
// A bad value is the returned error alone: the command prints it as its one
// line and exits 2. Only -h (or --help) prints the usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := parseArgs(fs, args); err != nil {
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
		_ = parseArgs(fs, args) // parsed once already: cannot fail
	}
	if len(errs) == 0 {
		errs = append(errs, checkPositive(fs, given, path))
	}
	return errors.Join(errs...)
}

// parseArgs is fs.Parse without the flag package's own printing, which
// wrote the error, the whole usage (75 lines for serve) and then, from the
// command, the error again. A bad flag or value is now only the returned
// error; -h or --help prints the usage to fs's output and returns
// flag.ErrHelp.
func parseArgs(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
	}
	return err
}

// positiveFlags are serve's flags that take a value above 0 only. The
// packages behind them read a zero field as "the default" (procpool.Config,
// server.Config), so a 0 a user wrote would silently become 10s, 30s or
// 4096 (and --heartbeat-interval 0 reached every worker as 0, whose ticker
// panicked until the circuit opened). A flag whose 0 means something of its
// own (off, auto: --max-rss, --pool-size, --queue-wait, ...) is not here;
// the packages' Validate refuses negative values, and parseServe the
// zeros of the flags it checks itself (--task-timeout, --pool-queue, ...).
var positiveFlags = []string{
	"start-timeout", "restart-backoff", "restart-backoff-max", "max-crashes", "crash-window",
	"heartbeat-interval", "heartbeat-timeout", "shutdown-timeout",
	"max-body", "max-conns", "read-timeout", "body-idle-timeout", "write-timeout", "idle-timeout", "drain-grace",
}

// checkPositive refuses a 0 for any of positiveFlags that fs has with
// another default, naming
// where the 0 came from: the flag, its environment variable or the file.
func checkPositive(fs *flag.FlagSet, given map[string]bool, path string) error {
	for _, name := range positiveFlags {
		f := fs.Lookup(name)
		if f == nil || !isZero(f.Value) || f.Value.String() == f.DefValue {
			continue
		}
		src := "--" + name + " " + f.Value.String()
		if !given[name] {
			if v, ok := os.LookupEnv(envName(name)); ok {
				src = envName(name) + "=" + server.Quote(v)
			} else if path != "" {
				src = path + ": " + name + " = " + f.Value.String()
			}
		}
		return fmt.Errorf("%s: want more than 0 (0 does not turn it off; the default is %s)", src, f.DefValue)
	}
	return nil
}

// isZero reports whether a flag's value is 0 (a duration, a count or a size).
func isZero(v flag.Value) bool {
	g, ok := v.(flag.Getter)
	if !ok {
		return false
	}
	switch x := g.Get().(type) {
	case time.Duration:
		return x == 0
	case int:
		return x == 0
	case uint64:
		return x == 0
	}
	return false
}

// parseFlagsArgs is parseFlags for a command that also takes positional
// arguments, before, between or after its flags (hybrid scale 4
// --admin-addr …): it returns them, in order.
func parseFlagsArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var flags, pos []string
	for len(args) > 0 {
		if err := parseArgs(fs, args); err != nil {
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

// Get returns the size, as a uint64 (flag.Getter).
func (s sizeFlag) Get() any {
	if s.p == nil {
		return uint64(0)
	}
	return *s.p
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
