package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/internal/procfs"
)

var pageSize = uint64(os.Getpagesize())

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy is the CPU time every core has spent not idle since boot
// (user, nice, system, irq, softirq, steal from /proc/stat's "cpu" line).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, _ := strconv.ParseUint(string(f[i]), 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / procfs.ClockTicks
}

// treeSample is the process tree rooted at one pid at one instant.
type treeSample struct {
	cpu   time.Duration // CPU of every live process, plus what each has reaped
	rss   uint64
	procs int
}

// sampleTree walks /proc once. A process's cutime/cstime hold the CPU of
// the children it has waited for, so the sum over the live tree counts every
// process that ever ran in it and was reaped inside it (isolate children,
// recycled workers) exactly once.
func sampleTree(root int) (treeSample, error) {
	byPID := map[int]procfs.Stat{}
	kids := map[int][]int{}
	if err := procfs.Walk(func(s procfs.Stat) {
		byPID[s.PID] = s
		kids[s.PPID] = append(kids[s.PPID], s.PID)
	}); err != nil {
		return treeSample{}, err
	}
	if _, ok := byPID[root]; !ok {
		return treeSample{}, fmt.Errorf("process %d: not running", root)
	}
	var t treeSample
	var ticks uint64
	stack := []int{root}
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		s := byPID[pid]
		ticks += s.CPUTicks
		t.rss += s.RSSPages * pageSize
		t.procs++
		stack = append(stack, kids[pid]...)
	}
	t.cpu = time.Duration(ticks) * time.Second / procfs.ClockTicks
	return t, nil
}

// treeMeter samples a process tree every interval until stopped, keeping
// the peak RSS and process count, and the CPU at start and at stop.
type treeMeter struct {
	root     int
	start    treeSample
	mu       sync.Mutex
	peakRSS  uint64
	peakProc int
	cancel   context.CancelFunc
	done     chan struct{}
}

func startTreeMeter(root int, every time.Duration) (*treeMeter, error) {
	first, err := sampleTree(root)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &treeMeter{root: root, start: first, peakRSS: first.rss, peakProc: first.procs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if s, err := sampleTree(root); err == nil {
					m.observe(s)
				}
			}
		}
	}()
	return m, nil
}

func (m *treeMeter) observe(s treeSample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peakRSS = max(m.peakRSS, s.rss)
	m.peakProc = max(m.peakProc, s.procs)
}

// stop ends the sampling and returns the cost over ok (2xx) requests.
func (m *treeMeter) stop(ok int64) (*Cost, error) {
	m.cancel()
	<-m.done
	last, err := sampleTree(m.root)
	if err != nil {
		return nil, err
	}
	m.observe(last)
	c := &Cost{CPUS: (last.cpu - m.start.cpu).Seconds(), PeakRSSBytes: m.peakRSS, PeakProcs: m.peakProc}
	if ok > 0 {
		c.CPUMSPerReq = c.CPUS * 1000 / float64(ok)
	}
	return c, nil
}
