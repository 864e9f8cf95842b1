//go:build linux

// Package procfs reads the process table from /proc: one parser of
// /proc/<pid>/stat and one walk over every process, for the PID 1 reaper
// (procpool), the bench's process-tree meter and the tests.
package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Stat is the part of /proc/<pid>/stat hybrid reads.
type Stat struct {
	PID, PPID int
	State     byte   // R, S, D, Z, T, …
	CPUTicks  uint64 // utime + stime + cutime + cstime, in clock ticks (USER_HZ)
	RSSPages  uint64
}

// ClockTicks is USER_HZ, the unit of CPUTicks: 100 on every Linux ABI Go
// supports (sysconf would need cgo).
const ClockTicks = 100

// ParseStat reads one /proc/<pid>/stat line. The command name is in
// parentheses and may hold spaces or parentheses, so fields are counted from
// the last ')'.
func ParseStat(b []byte) (Stat, error) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return Stat{}, fmt.Errorf("stat %q: no command name", b)
	}
	var s Stat
	var err error
	if s.PID, err = strconv.Atoi(string(bytes.TrimSpace(b[:open]))); err != nil {
		return Stat{}, fmt.Errorf("stat: pid: %w", err)
	}
	f := bytes.Fields(b[end+1:]) // f[0] is field 3 (state)
	if len(f) < 22 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("stat of %d: %d fields", s.PID, len(f)+2)
	}
	num := func(i int) uint64 { // i is the 1-based field number of proc(5)
		n, e := strconv.ParseUint(string(f[i-3]), 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("stat of %d: field %d: %w", s.PID, i, e)
		}
		return n
	}
	s.State = f[0][0]
	s.PPID = int(num(4))
	s.CPUTicks = num(14) + num(15) + num(16) + num(17)
	s.RSSPages = num(24)
	return s, err
}

// Walk calls fn with the stat of every process, in /proc's order; a
// process that is gone between the listing and its read is skipped.
func Walk(fn func(Stat)) error {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if s, err := ParseStat(b); err == nil {
			fn(s)
		}
	}
	return nil
}
