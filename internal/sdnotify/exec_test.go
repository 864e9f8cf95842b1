package sdnotify

import (
	"os"
	"os/exec"
)

// execWithListenPID runs exe as systemd would start a socket-activated
// service: f at descriptor 3, LISTEN_FDS=1 and LISTEN_PID set to the new
// process's own pid (by the shell, which then execs in place).
func execWithListenPID(exe string, f *os.File) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" -test.run=TestListenersTakesPassedSockets`, exe)
	cmd.Env = append(os.Environ(), "SDNOTIFY_CHILD=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=web")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	return cmd
}
