package main

import (
	"io"
	"os"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"0", 0}, {"1024", 1024}, {"32MiB", 32 << 20}, {"512kib", 512 << 10}, {"1GiB", 1 << 30},
		{"10MB", 10_000_000}, {"2 MiB", 2 << 20}, {"7B", 7},
	} {
		if got, err := parseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "12XB", "99999999999999999999", "16777216TiB", "9999999999GiB"} {
		if got, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) = %d; want an error", bad, got)
		}
	}
}

func TestEnvFillsUnsetFlags(t *testing.T) {
	t.Setenv("HYBRID_WORKERS", "3")
	t.Setenv("HYBRID_ADDR", ":9999")
	t.Setenv("HYBRID_MAX_BODY", "1MiB")
	c, err := parseServe([]string{"--addr", ":7000"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.pool.Workers != 3 || c.server.MaxBody != 1<<20 {
		t.Errorf("from env: workers %d, max body %d; want 3, 1MiB", c.pool.Workers, c.server.MaxBody)
	}
	if c.pool.Addr != ":7000" {
		t.Errorf("addr = %q; want the flag's :7000 to win over HYBRID_ADDR", c.pool.Addr)
	}
}

// A bad command-line or environment value is one line on stderr and exit
// 2, for serve and the client commands alike, with no usage around it;
// -h still prints the usage, and exits 0.
func TestFlagsBadValueIsOneLine(t *testing.T) {
	off := []string{"--addr", "127.0.0.1:0", "--admin-addr", "off"}
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{append([]string{"serve", "--workers", "x"}, off...), nil, `hybrid serve: invalid value "x" for flag -workers`},
		{append([]string{"serve", "--no-such-flag"}, off...), nil, "hybrid serve: flag provided but not defined: -no-such-flag"},
		{append([]string{"serve"}, off...), []string{"HYBRID_MAX_BODY=lots"}, `hybrid serve: invalid HYBRID_MAX_BODY="lots"`},
		{append([]string{"serve", "--heartbeat-interval", "0"}, off...), nil, "hybrid serve: --heartbeat-interval 0s: want more than 0"},
		{append([]string{"serve"}, off...), []string{"HYBRID_HEARTBEAT_INTERVAL=0"}, `hybrid serve: HYBRID_HEARTBEAT_INTERVAL="0": want more than 0`},
		{[]string{"status", "--interval", "x"}, nil, `hybrid status: invalid value "x" for flag -interval`},
		{[]string{"scale", "3", "--bogus"}, nil, "hybrid scale: flag provided but not defined: -bogus"},
		{[]string{"reload", "--admin-addr"}, nil, "hybrid reload: flag needs an argument: -admin-addr"},
	} {
		out, errOut, code := runHybrid(t, tc.env, tc.args...)
		if code != 2 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, tc.want) {
			t.Errorf("hybrid %q %q: exit %d, stdout %q, stderr %q; want exit 2 and one line starting %q",
				tc.args, tc.env, code, out, errOut, tc.want)
		}
	}
	for _, cmd := range []string{"serve", "status", "scale"} {
		_, errOut, code := runHybrid(t, nil, cmd, "-h")
		if code != 0 || !strings.HasPrefix(errOut, "Usage of "+cmd+":") || strings.Count(errOut, "\n") < 3 {
			t.Errorf("hybrid %s -h: exit %d, stderr %q; want exit 0 and the usage", cmd, code, errOut)
		}
	}
}

// A 0 for a flag whose packages would read it as "the default" is refused,
// from the command line, the environment or the file; a 0 that means off or
// auto is taken.
func TestFlagsRefuseZero(t *testing.T) {
	for _, name := range positiveFlags {
		if _, err := parseServe([]string{"--" + name, "0"}, io.Discard); err == nil ||
			!strings.Contains(err.Error(), "--"+name+" 0") || !strings.Contains(err.Error(), "want more than 0") {
			t.Errorf("serve --%s 0: %v; want it refused, naming the flag", name, err)
		}
	}
	t.Run("env", func(t *testing.T) {
		t.Setenv("HYBRID_CRASH_WINDOW", "0s")
		if _, err := parseServe(nil, io.Discard); err == nil || !strings.Contains(err.Error(), `HYBRID_CRASH_WINDOW="0s"`) {
			t.Errorf("HYBRID_CRASH_WINDOW=0s: %v; want it refused, naming the variable", err)
		}
	})
	t.Run("file", func(t *testing.T) {
		path := t.TempDir() + "/hybrid.conf"
		if err := os.WriteFile(path, []byte("restart-backoff-max = 0\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := parseServe([]string{"--config", path}, io.Discard); err == nil || !strings.Contains(err.Error(), path+": restart-backoff-max") {
			t.Errorf("restart-backoff-max = 0 in a file: %v; want it refused, naming the file", err)
		}
	})
	for _, name := range []string{"worker-procs", "max-rss", "max-requests", "max-inflight-body", "max-conns-per-ip",
		"pool-size", "queue-wait", "isolate-cpu", "isolate-warm", "isolate-procs"} {
		if _, err := parseServe([]string{"--" + name, "0"}, io.Discard); err != nil {
			t.Errorf("serve --%s 0: %v; want it taken (its 0 means off or auto)", name, err)
		}
	}
}
