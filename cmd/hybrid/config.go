package main

// The configuration file of `hybrid serve --config FILE` (or HYBRID_CONFIG)
// holds one setting per line, named exactly as its long flag:
//
//	# the image workers
//	max-body = 64MiB
//	mode = image=pool,hash=inline
//	isolate-user = ""
//
// Why this format and not TOML, YAML or JSON: it needs no dependency and no
// second naming scheme, and every value goes through its flag's own parser,
// so the file, the environment and the command line accept exactly the same
// values and say the same things about a bad one. A value may be written as
// a Go string literal ("…") to keep surrounding spaces or to be empty. A line
// whose first non-blank character is # is a comment; a # elsewhere is part of
// the value (tokens may hold one).
//
// Precedence: command line > environment (HYBRID_*) > file > default
// (parseFlags). The primary and every worker read the file when they start:
// workers re-execute with the primary's arguments, so a rolling reload picks
// up the file's worker-level settings, and [reloadChecker] refuses a reload
// whose file a new worker would refuse.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// configFlag is the flag naming the configuration file.
const configFlag = "config"

// maxConfigFile bounds a configuration file: a real one is a few KiB.
const maxConfigFile = 1 << 20

// configPath returns the configuration file fs names: --config if given on
// the command line, else HYBRID_CONFIG, else "" (none, or fs has no such flag).
func configPath(fs *flag.FlagSet, given map[string]bool) string {
	f := fs.Lookup(configFlag)
	if f == nil {
		return ""
	}
	if given[configFlag] {
		return f.Value.String()
	}
	return os.Getenv(envName(configFlag))
}

// applyConfigFile sets fs's flags from the file at path, each through the
// flag's own parser, in file order. Every line is checked, whichever source
// wins in the end, so a file is valid or not whatever the command line says.
// The error is one line naming path:line: an unknown name, a name given
// twice, a line without "=", or a value the flag refuses.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if len(data) > maxConfigFile {
		return fmt.Errorf("config: %s: larger than %s", path, formatSize(maxConfigFile))
	}
	seen := map[string]int{} // name → line
	for i, line := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		fail := func(format string, args ...any) error {
			return fmt.Errorf("config: %s:%d: %s", path, n, fmt.Sprintf(format, args...))
		}
		text := strings.TrimSpace(string(line))
		if text == "" || text[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(text, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" {
			return fail("want name = value, as in max-body = 64MiB")
		}
		if strings.HasPrefix(name, "-") {
			return fail("write %s, not %s: a flag's name without dashes", strings.TrimLeft(name, "-"), name)
		}
		if name == configFlag {
			return fail("a configuration file cannot name another")
		}
		if fs.Lookup(name) == nil {
			return fail("unknown setting %q (the names are the flags of hybrid serve -h)", name)
		}
		if first, dup := seen[name]; dup {
			return fail("%s set again (first on line %d)", name, first)
		}
		seen[name] = n
		if strings.HasPrefix(value, `"`) {
			s, err := strconv.Unquote(value)
			if err != nil {
				return fail("%s: a quoted value must be one Go string literal", name)
			}
			value = s
		}
		if err := fs.Set(name, value); err != nil {
			return fail("%s = %q: %v", name, value, err)
		}
	}
	return nil
}

// primarySettings are the settings the primary reads once, when it starts:
// its address and socket, the worker count, its supervision of the workers,
// its own log and the admin endpoint. A reload rolls the workers and leaves
// these as they were; an upgrade, which starts a new primary, applies them.
var primarySettings = []string{
	"addr", "admin-addr", "admin-token", "workers", "worker-procs", "listen-mode", "accept-balance",
	"start-timeout", "restart-backoff", "restart-backoff-max", "max-crashes", "crash-window",
	"heartbeat-interval", "heartbeat-timeout", "max-rss", "max-requests", "shutdown-timeout",
	"isolate-cgroup", "log-format", "log-level",
}

// resolveServe returns the value of every flag of hybrid serve as args, the
// environment and the configuration file set them now, after checking them
// as a worker would (parseServe).
func resolveServe(args []string) (map[string]string, error) {
	if _, err := parseServe(args, io.Discard); err != nil {
		return nil, err
	}
	fs, _ := serveFlagSet(io.Discard)
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	values := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { values[f.Name] = f.Value.String() })
	return values, nil
}

// changedPrimarySettings returns the names of the primary-level settings
// whose value differs between old and new, in primarySettings order.
func changedPrimarySettings(old, new map[string]string) []string {
	var changed []string
	for _, name := range primarySettings {
		if old[name] != new[name] {
			changed = append(changed, name)
		}
	}
	return changed
}

// reloadChecker is the cluster as SIGHUP and the admin endpoint reload it:
// Reload first re-reads the configuration the way each new worker will, and
// refuses an invalid one with one error line, so that every worker keeps
// running as it was; it logs the primary-level settings that changed, which
// only an upgrade applies. The other methods are the cluster's own. An
// upgrade is not checked here: the new binary may know settings this one
// does not, and it checks the file itself when it starts (a refusal is a
// rollback).
type reloadChecker struct {
	server.Cluster
	args    []string          // hybrid serve's arguments, after "serve"
	started map[string]string // the settings the primary started with
	log     *slog.Logger
}

// newReloadChecker returns the reload checker of c, a primary started with
// args (after "serve"), which the primary has already parsed.
func newReloadChecker(c server.Cluster, args []string, log *slog.Logger) (*reloadChecker, error) {
	started, err := resolveServe(args)
	if err != nil {
		return nil, err
	}
	return &reloadChecker{Cluster: c, args: args, started: started, log: log}, nil
}

// Reload checks the configuration, then starts the cluster's rolling reload.
// An invalid configuration is a *server.Error: 409 invalid_config, with the
// one line that names it.
func (r *reloadChecker) Reload() error {
	now, err := resolveServe(r.args)
	if err != nil {
		r.log.Error("reload refused: the configuration is invalid; every worker keeps running as it was", "err", err.Error())
		return server.Errorf(fasthttp.StatusConflict, "invalid_config", "reload refused, every worker keeps running: %v", err)
	}
	if changed := changedPrimarySettings(r.started, now); len(changed) > 0 {
		r.log.Warn("reload: changed settings of the primary apply on upgrade: "+strings.Join(changed, ", "),
			"applies_on_upgrade", changed)
	}
	return r.Cluster.Reload()
}
