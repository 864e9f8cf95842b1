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
// (parseFlags). Only the primary opens the file: when it starts, and at
// each reload ([reloadChecker], which refuses a file a new worker would
// refuse). Its workers, which re-execute with its arguments, parse the
// contents it last accepted, which it passes them in [snapshotEnv]; so an
// edit reaches no worker, restarted, recycled or scaled up, before a reload
// has checked and applied it, and a bad edit leaves everything as it was.

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unicode/utf8"

	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// configFlag is the flag naming the configuration file.
const configFlag = "config"

// maxConfigFile bounds a configuration file: a real one is a few KiB. The
// workers get it in one environment string ([snapshotEnv]), which the
// kernel caps at 128 KiB (MAX_ARG_STRLEN).
const maxConfigFile = 64 << 10

// snapshotEnv is the environment variable in which the primary passes its
// workers the configuration file's contents as it last accepted them. A
// worker parses these in place of the file, which it never opens.
const snapshotEnv = "HYBRID_CONFIG_SNAPSHOT"

// maxRefusal bounds what a config error keeps of a flag's own refusal of a
// value: a flag's parser may quote the whole value, however long.
const maxRefusal = 160

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

// applyConfigFile sets fs's flags from the file at path (in a worker, from
// the contents its primary passed: configContents), each through the
// flag's own parser, in file order. Every line is checked, whichever source
// wins in the end, so a file is valid or not whatever the command line
// says. The error is one line naming path:line: an unknown name, a name
// given twice, a line without "=", or a value the flag refuses.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := configContents(path)
	if err != nil {
		return err
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
		if bare := strings.TrimLeft(name, "-"); bare != name && len(name)-len(bare) <= 2 && fs.Lookup(bare) != nil {
			return fail("write %s, not %s: a flag's name without dashes", bare, name)
		}
		if name == configFlag {
			return fail("a configuration file cannot name another")
		}
		if fs.Lookup(name) == nil {
			return fail("unknown setting %s (the names are the flags of hybrid serve -h)", server.Quote(name))
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
			return fail("%s = %s: %s", name, server.Quote(value), refusal(err, value))
		}
	}
	return nil
}

// refusal is err, a flag's refusal of value, for an error line: the whole
// value quoted in it is cut as server.Quote cuts it, and the rest to
// maxRefusal bytes.
func refusal(err error, value string) string {
	msg := err.Error()
	if q := strconv.Quote(value); len(q) > len(server.Quote(value)) {
		msg = strings.ReplaceAll(msg, q, server.Quote(value))
	}
	if len(msg) <= maxRefusal {
		return msg
	}
	n := maxRefusal
	for n > 0 && !utf8.RuneStart(msg[n]) {
		n--
	}
	return msg[:n] + "…"
}

// configContents returns what applyConfigFile parses for path: in a
// worker, the contents its primary passed in snapshotEnv; in the primary,
// while a reload's check runs, the contents the check read (pinned); else
// the file's (readConfigFile).
func configContents(path string) ([]byte, error) {
	if procpool.IsWorker() {
		s, ok := os.LookupEnv(snapshotEnv)
		if !ok {
			return nil, fmt.Errorf("config: %s: the primary passed no %s: a worker never reads the file itself", path, snapshotEnv)
		}
		return []byte(s), nil
	}
	pinned.Lock()
	data, ok := pinned.data, pinned.set
	pinned.Unlock()
	if ok {
		return data, nil
	}
	return readConfigFile(path)
}

// pinned, while set, is the configuration file's contents that parseFlags
// takes in place of reading the file: a reload's check sets it
// (checkServeConfig), so that the contents it checks are the ones the
// workers get. The mutex only orders memory: reloadChecker.mu makes the
// checks one at a time, and the primary parses nothing else meanwhile.
var pinned struct {
	sync.Mutex
	data []byte
	set  bool
}

// readConfigFile reads the configuration file at path: a regular file of
// at most maxConfigFile bytes, with no NUL byte. It never blocks on a FIFO
// or a device: the open does not wait (O_NONBLOCK), and only a regular file
// is read.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("config: %s: %s, not a regular file", path, fileKind(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if len(data) > maxConfigFile {
		return nil, fmt.Errorf("config: %s: larger than %s (the most the primary passes its workers)", path, formatSize(maxConfigFile))
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, fmt.Errorf("config: %s: holds a NUL byte: not a text file", path)
	}
	return data, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "a special file"
}

// primarySettings are the settings the primary reads once, when it starts:
// its address and socket, the worker count, its supervision of the workers,
// its own log and the admin endpoint. A reload rolls the workers and leaves
// these as they were; an upgrade, which starts a new primary, applies them.
var primarySettings = []string{
	"addr", "admin-addr", "admin-token", "workers", "worker-procs", "listen-mode", "accept-balance",
	"start-timeout", "restart-backoff", "restart-backoff-max", "max-crashes", "crash-window",
	"heartbeat-interval", "heartbeat-timeout", "max-rss", "max-requests", "shutdown-timeout",
	"isolate-cgroup", "log-format", "log-level", "rate-limit-keys", "cache-size",
}

// resolveServe returns the value of every flag of hybrid serve as args, the
// environment and the configuration file set them now, after checking them
// as a worker would (parseServe).
func resolveServe(args []string) (map[string]string, *serveConfig, error) {
	cfg, err := parseServe(args, io.Discard)
	if err != nil {
		return nil, nil, err
	}
	fs, _ := serveFlagSet(io.Discard)
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, err
	}
	values := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { values[f.Name] = f.Value.String() })
	return values, cfg, nil
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

// checkServeConfig reads hybrid serve's configuration file, as args and the
// environment name it, once, and checks its contents as a new worker will
// parse them (resolveServe). It returns the environment that passes those
// contents to the workers (snapshotEnv; nil without a file) and the value
// of every setting.
func checkServeConfig(args []string) (env []string, values map[string]string, err error) {
	fs, _ := serveFlagSet(io.Discard)
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	path := configPath(fs, given)
	if path == "" {
		values, cfg, err := resolveServe(args)
		if err != nil {
			return nil, nil, err
		}
		env, err := cfg.scale.keysEnv()
		return env, values, err
	}
	data, err := readConfigFile(path)
	if err != nil {
		return nil, nil, err
	}
	pinned.Lock()
	pinned.data, pinned.set = data, true
	pinned.Unlock()
	defer func() {
		pinned.Lock()
		pinned.data, pinned.set = nil, false
		pinned.Unlock()
	}()
	values, cfg, err := resolveServe(args)
	if err != nil {
		return nil, nil, err
	}
	keys, err := cfg.scale.keysEnv()
	if err != nil {
		return nil, nil, err
	}
	return append([]string{snapshotEnv + "=" + string(data)}, keys...), values, nil
}

// reloadChecker is the cluster as SIGHUP and the admin endpoint reload it:
// Reload first reads the configuration file once and checks it the way
// each new worker will parse it, and refuses an invalid one with one error
// line, so that every worker keeps running as it was; else it starts the
// reload with those contents as the workers' snapshot (procpool's
// ReloadEnv), which every worker started from then on parses. It logs the
// primary-level settings that changed, which only an upgrade applies. The
// other methods are the cluster's own. An upgrade is not checked here: the
// new binary may know settings this one does not, and it checks the file
// itself when it starts (a refusal is a rollback).
type reloadChecker struct {
	server.Cluster
	// reloadEnv is the cluster's ReloadEnv, where it has one (a
	// *procpool.Supervisor): Reload with a new Config.Env.
	reloadEnv func(env []string) error
	args      []string          // hybrid serve's arguments, after "serve"
	started   map[string]string // the settings the primary started with
	log       *slog.Logger
	// mu makes the checks one at a time; a reload asked for while one is
	// checked is refused as busy, as one asked for during a reload is.
	mu sync.Mutex
}

// newReloadChecker returns the reload checker of c, a primary started with
// args (after "serve"), which the primary has already parsed. It reads the
// configuration file, and puts its contents in the primary's own
// environment (snapshotEnv), which every worker inherits: call it before
// Run forks the first. A reload's snapshot then replaces it (ReloadEnv sets
// Config.Env, which comes after the inherited environment, and wins).
// Config.Env is the snapshot's: hybrid serve sets nothing else in it.
func newReloadChecker(c server.Cluster, args []string, log *slog.Logger) (*reloadChecker, error) {
	env, started, err := checkServeConfig(args)
	if err != nil {
		return nil, err
	}
	os.Unsetenv(snapshotEnv) // none without a file, whatever the primary inherited
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if err := os.Setenv(k, v); err != nil {
			return nil, fmt.Errorf("config: passing the file to the workers: %w", err)
		}
	}
	r := &reloadChecker{Cluster: c, args: args, started: started, log: log}
	if re, ok := c.(interface{ ReloadEnv([]string) error }); ok {
		r.reloadEnv = re.ReloadEnv
	}
	return r, nil
}

// Reload checks the configuration, then starts the cluster's rolling
// reload. An invalid configuration is a *server.Error: 409 invalid_config,
// with the one line that names it.
func (r *reloadChecker) Reload() error {
	if !r.mu.TryLock() {
		return fmt.Errorf("reload refused: the configuration of another is being checked: %w", procpool.ErrBusy)
	}
	defer r.mu.Unlock()
	env, now, err := checkServeConfig(r.args)
	if err != nil {
		r.log.Error("reload refused: the configuration is invalid; every worker keeps running as it was", "err", err.Error())
		return server.Errorf(fasthttp.StatusConflict, "invalid_config", "reload refused, every worker keeps running: %v", err)
	}
	if changed := changedPrimarySettings(r.started, now); len(changed) > 0 {
		r.log.Warn("reload: changed settings of the primary apply on upgrade: "+strings.Join(changed, ", "),
			"applies_on_upgrade", changed)
	}
	if env != nil && r.reloadEnv != nil {
		return r.reloadEnv(env)
	}
	return r.Cluster.Reload()
}
