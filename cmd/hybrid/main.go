// Command hybrid is a multi-core compute server: a primary process that
// supervises prefork worker processes sharing one listening socket.
//
//	hybrid serve [flags]   run the server (see hybrid serve -h)
//	hybrid bench [flags]   benchmark modes and worker counts (see hybrid bench -h)
//	hybrid version         print the version
//
// The same binary plays every role: a process re-executed by its primary with
// HYBRID_ROLE=worker in its environment is a worker, and one re-executed by a
// worker with HYBRID_ROLE=isolate an isolate child.
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/hybrid-server/hybrid/internal/fds"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
)

const usage = `hybrid: a multi-core compute server

usage:
  hybrid serve [flags]   run the server: a primary and its worker processes
  hybrid bench [flags]   measure workloads × modes × worker counts (hybrid bench -h)
  hybrid version         print the version
  hybrid help            print this help

Every flag of serve also reads an environment variable: --max-body is
HYBRID_MAX_BODY. Run "hybrid serve -h" for the flags.
`

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	// Descriptors a launcher left open must not reach workers or isolated
	// children: each process passes on only what it hands over on purpose.
	if err := fds.CloseOnExec(3); err != nil {
		fmt.Fprintf(os.Stderr, "hybrid: marking inherited descriptors close-on-exec: %v\n", err)
		return 1
	}
	// One dispatch on the role a parent gave this process (procpool and
	// isolate share the variable); a user never sets it.
	switch role := os.Getenv(procpool.RoleEnv); role {
	case procpool.RoleWorker:
		return runWorker(args)
	case isolate.RoleChild:
		return isolate.Serve(childJob)
	case isolate.RoleProbe:
		return isolate.Probe()
	case "":
	default:
		if code, ok := testRole(role); ok { // test builds only (-tags testhooks)
			return code
		}
		fmt.Fprintf(os.Stderr, "hybrid: unknown %s=%q\n", procpool.RoleEnv, role)
		return 2
	}
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:])
	case "bench":
		return runBench(args[1:])
	case "version", "--version", "-version":
		race := ""
		if raceEnabled {
			race = " (race detector)"
		}
		fmt.Printf("hybrid %s %s %s/%s%s\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH, race)
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "hybrid: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
