//go:build linux && testhooks

package isolate

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/server"
	"github.com/valyala/fasthttp"
)

// registerFaults registers the test-only fault workloads (fault-panic,
// -segv, -alloc, -spin, -sleep, -fork, -dial) in a child, only when the test
// hooks switch (HYBRID_TEST_HOOKS, README) is on: each misbehaves in one way
// the isolator must contain.
func registerFaults() {
	fault := func(name string, run handlers.Func) {
		handlers.Register(&handlers.Workload{Name: "fault-" + name, Group: "test", Run: run, ContentType: "text/plain"})
	}
	fault("panic", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		panic("fault: panic in an isolated task")
	})
	fault("segv", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		syscall.Kill(os.Getpid(), syscall.SIGSEGV)
		time.Sleep(time.Second)
		return nil, nil
	})
	fault("alloc", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		var hoard [][]byte
		for {
			b := make([]byte, 16<<20)
			for i := range b {
				b[i] = byte(i)
			}
			hoard = append(hoard, b)
		}
	})
	fault("spin", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		for x := 0; ; x++ {
			_ = x
		}
	})
	fault("sleep", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		select {}
	})
	fault("fork", func(context.Context, handlers.Params, []byte) ([]byte, error) {
		started := 0
		for range 200 { // a fork bomb, bounded by the pids cgroup
			cmd := exec.Command("/proc/self/exe")
			cmd.Env = []string{RoleEnv + "=" + RoleFaultSleeper}
			if cmd.Start() != nil {
				break
			}
			started++
		}
		return []byte(fmt.Sprintf("started %d processes", started)), nil
	})
	fault("dial", func(_ context.Context, p handlers.Params, _ []byte) ([]byte, error) {
		conn, err := net.DialTimeout("tcp", p["addr"], 2*time.Second)
		if err != nil {
			return nil, server.Errorf(fasthttp.StatusUnprocessableEntity, "dial_failed", "dial %s: %v", p["addr"], err)
		}
		conn.Close()
		return []byte("connected to " + p["addr"]), nil
	})
}

// RoleFaultSleeper is the role of the processes the fork fault starts.
const RoleFaultSleeper = "fault-sleeper"

// RunFaultSleeper is the body of the processes the fork fault starts: they
// sleep until killed, so a test can see whether any survive.
func RunFaultSleeper() int {
	time.Sleep(time.Hour)
	return 0
}
