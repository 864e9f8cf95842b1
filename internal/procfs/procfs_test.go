//go:build linux

package procfs

import (
	"os"
	"testing"
)

func TestParseStat(t *testing.T) {
	line := []byte("4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 123456 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")
	s, err := ParseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if s.PID != 4242 || s.PPID != 17 || s.State != 'S' || s.CPUTicks != 250+50+7+3 || s.RSSPages != 300 {
		t.Errorf("ParseStat = %+v; want pid 4242, ppid 17, S, cpu 310, rss 300 pages", s)
	}
	for _, bad := range []string{"", "12 (x", "x (y) S 1", "1 (y) S 1 2 3"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q): want an error", bad)
		}
	}
}

// Walk sees this process, with its parent.
func TestWalkSeesThisProcess(t *testing.T) {
	var me *Stat
	if err := Walk(func(s Stat) {
		if s.PID == os.Getpid() {
			me = &s
		}
	}); err != nil {
		t.Fatal(err)
	}
	if me == nil || me.PPID != os.Getppid() || me.State == 'Z' {
		t.Errorf("Walk: this process = %+v; want pid %d, ppid %d", me, os.Getpid(), os.Getppid())
	}
}
