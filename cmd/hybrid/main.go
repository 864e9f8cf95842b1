// Command hybrid is a multi-core compute server: a primary process that
// supervises prefork worker processes sharing one listening socket.
//
//	hybrid serve [flags]   run the server (see hybrid serve -h)
//	hybrid bench [flags]   benchmark modes and worker counts (see hybrid bench -h)
//	hybrid status          the running cluster's workers (and reload, upgrade,
//	                       scale N: see client.go)
//	hybrid version         print the version and build
//
// The same binary plays every role: a process re-executed by its primary with
// HYBRID_ROLE=worker in its environment is a worker, and one re-executed by a
// worker with HYBRID_ROLE=isolate an isolate child.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/hybrid-server/hybrid/internal/fds"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/procpool"
)

const usage = `hybrid: a multi-core compute server

usage:
  hybrid serve [flags]   run the server: a primary and its worker processes
  hybrid bench [flags]   measure workloads × modes × worker counts (hybrid bench -h)
  hybrid version         print the version and build
  hybrid help            print this help

control a running primary, through its admin endpoint (--admin-addr,
HYBRID_ADMIN_ADDR; --admin-token, HYBRID_ADMIN_TOKEN):
  hybrid status [--json] [--watch]   its workers, pm2 ls style
  hybrid reload                      rolling reload: new workers, re-read --config
  hybrid upgrade                     start the binary now at its path as the new primary
  hybrid scale N                     run N workers
  hybrid pool N                      set every worker's task-pool size

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
	case "status":
		return runStatus(args[1:])
	case "reload":
		return runReload(args[1:])
	case "upgrade":
		return runUpgrade(args[1:])
	case "scale":
		return runScale(args[1:])
	case "pool":
		return runPool(args[1:])
	case "version", "--version", "-version":
		fmt.Println(versionLine())
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "hybrid: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// version is this binary's version (procpool.BuildInfo).
func version() string {
	v, _ := procpool.BuildInfo()
	return v
}

// versionLine is what hybrid version prints: the version, the build (the
// VCS revision, where the binary knows it), the Go version and the platform:
//
//	hybrid v1.4.0 build 0123456789ab go1.26.8 linux/amd64
func versionLine() string {
	v, build := procpool.BuildInfo()
	if build != "" {
		v += " build " + build
	}
	race := ""
	if raceEnabled {
		race = " (race detector)"
	}
	return fmt.Sprintf("hybrid %s %s %s/%s%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH, race)
}
