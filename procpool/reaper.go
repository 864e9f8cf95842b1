//go:build linux

package procpool

import (
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/internal/procfs"
)

// As PID 1 in a container, the primary inherits every orphan in the
// container and must reap the ones it did not start, or they stay zombies.
// It may not reap its own workers: their exec.Cmd.Wait does. ours holds the
// pids of live workers; reapMu makes "start and record" atomic against a scan.
var (
	reapMu sync.Mutex
	ours   = map[int]bool{}
)

// startLocked starts cmd and records it as ours until forget.
func startLocked(cmd *exec.Cmd) error {
	reapMu.Lock()
	defer reapMu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	ours[cmd.Process.Pid] = true
	return nil
}

func forget(pid int) {
	reapMu.Lock()
	delete(ours, pid)
	reapMu.Unlock()
}

// reapOrphans reaps zombie children that are not workers, on SIGCHLD and
// every few seconds, until stop is called.
func reapOrphans(log *slog.Logger) (stop func()) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-sig:
			case <-t.C:
			}
			reapZombies(log)
		}
	}()
	log.Info("running as PID 1: reaping orphaned processes")
	return func() {
		signal.Stop(sig)
		close(quit)
		<-done
	}
}

func reapZombies(log *slog.Logger) {
	reapMu.Lock()
	defer reapMu.Unlock()
	self := os.Getpid()
	var zombies []int
	procfs.Walk(func(s procfs.Stat) {
		if s.State == 'Z' && s.PPID == self && !ours[s.PID] {
			zombies = append(zombies, s.PID)
		}
	})
	for _, pid := range zombies {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil {
			log.Debug("reaped orphan", "pid", pid)
		}
	}
}
