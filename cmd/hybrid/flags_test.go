package main

import (
	"flag"
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

// The README documents every flag with its environment variable.
func TestREADMEListsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := serveFlagSet(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		row := "`--" + f.Name + "`"
		if !strings.Contains(string(readme), row) || !strings.Contains(string(readme), "`"+envName(f.Name)+"`") {
			t.Errorf("README.md lacks a row for %s with %s", row, envName(f.Name))
		}
	})
}
