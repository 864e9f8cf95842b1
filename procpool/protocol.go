package procpool

import (
	"encoding/json"
	"fmt"
	"time"
)

// RoleEnv is the environment variable a parent sets when it re-executes its own
// binary, telling the child which role to play. It is private to the binary:
// users never set it.
const RoleEnv = "HYBRID_ROLE"

// RoleWorker is the value of [RoleEnv] for a worker process.
const RoleWorker = "worker"

// Environment variables the primary sets for a worker, besides [RoleEnv].
const (
	workerIDEnv   = "HYBRID_WORKER_ID"
	listenEnv     = "HYBRID_LISTEN"       // "fd" (shared, fd 3) or "reuseport:<addr>"
	maxRequestEnv = "HYBRID_MAX_REQUEST"  // unused by the worker; visible in /proc for debugging
	boardEnv      = "HYBRID_ACCEPT_BOARD" // "<entry>/<entries>": the worker's accept board entry, on fd 5
	// poolSizeEnv is the task-pool size set at run time
	// (Supervisor.SetPoolSize). Not HYBRID_POOL_SIZE: that is --pool-size's
	// own variable, which workerEnv would strip from the user's environment.
	poolSizeEnv = "HYBRID_RUNTIME_POOL_SIZE"
	// sharedEnv names Config.Shared's descriptors: "<name>=<fd>,…", from
	// fd 6 on.
	sharedEnv = "HYBRID_SHARED"
)

// upgradeEnv tells a primary started by an upgrade what it inherited:
// "mode=<listen mode>,listener=<fd>,ready=<fd>,carry=<fd>,from=<old primary's pid>[,<name>=<fd>…]"
// (see upgrade.go and carry.go). Like [RoleEnv] it is private to the binary.
const upgradeEnv = "HYBRID_UPGRADE"

// Descriptor numbers in the worker (0-2 are stdio).
const (
	listenerFD = 3
	controlFD  = 4
	boardFD    = 5
	sharedFD   = 6 // the first of Config.Shared's
)

// ExitConfig is the exit code of a worker whose start-up checks failed
// (EX_CONFIG from sysexits.h). The primary does not retry it: it opens the
// circuit at once and logs the worker's message.
const ExitConfig = 78

// OrphanGrace bounds how long a worker whose primary died keeps draining before
// it exits.
const OrphanGrace = 1500 * time.Millisecond

// Heartbeat is the status a worker reports every heartbeat interval.
type Heartbeat struct {
	RSS        uint64 `json:"rss_bytes"`
	Goroutines int    `json:"goroutines"`
	Requests   uint64 `json:"requests"`
	InFlight   int64  `json:"in_flight"`
	// Metrics is the worker's metrics snapshot, opaque to procpool: the
	// primary hands it to its [MetricsSink]. At most [MaxMetrics] bytes;
	// a larger one is left out of the heartbeat.
	Metrics json.RawMessage `json:"metrics,omitempty"`
	// Pprof is the base URL of the worker's loopback profiling server
	// (--pprof), secret path included; empty without one.
	Pprof string `json:"pprof,omitempty"`
}

// MaxMetrics bounds Heartbeat.Metrics, within the 64 KiB a control
// message may take.
const MaxMetrics = 48 << 10

// MetricsSink receives the workers' metrics payloads (Heartbeat.Metrics),
// which procpool does not interpret. Threading: its methods are called on
// the supervisor's loop goroutine, and must not block.
type MetricsSink interface {
	// Beat is worker pid's latest payload (slot is its worker ID).
	Beat(slot, pid int, payload []byte)
	// Exit says worker pid has exited: its last payload is final. Every
	// heartbeat it wrote before it exited has been given to Beat.
	Exit(slot, pid int)
}

// message is one line on the control channel: "ready" (with the worker's
// version and build), "heartbeat" and "fatal" from worker to primary,
// "pool" (a task-pool size) from primary to worker.
type message struct {
	Type    string     `json:"type"`
	Beat    *Heartbeat `json:"beat,omitempty"`
	Message string     `json:"message,omitempty"`
	Version string     `json:"version,omitempty"`
	Build   string     `json:"build,omitempty"`
	Size    int        `json:"size,omitempty"`
}

const (
	msgReady     = "ready"
	msgHeartbeat = "heartbeat"
	msgFatal     = "fatal"
	msgPoolSize  = "pool"
)

func encodeMessage(m message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("procpool: encode %s message: %w", m.Type, err)
	}
	return append(b, '\n'), nil
}
