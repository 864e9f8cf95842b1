package isolate

import (
	"errors"
	"fmt"
)

// The outcomes of a run that did not end in the job's output or its own
// error. Each is counted in Stats.Outcomes under the name in its comment;
// package handlers maps each to an HTTP status in its one table.
var (
	// ErrTimeout: the job did not finish within Config.Timeout; the child
	// was killed ("isolate_timeout").
	ErrTimeout = errors.New("isolate: wall-clock limit")
	// ErrMemory: the child hit its memory limit ("memory_limit").
	ErrMemory = errors.New("isolate: memory limit")
	// ErrCPU: the child used up its CPU time ("cpu_limit").
	ErrCPU = errors.New("isolate: CPU limit")
	// ErrViolation: the child made a system call its seccomp filter refuses
	// (a socket, a file, a new process, a signal to another process) and
	// the kernel killed it ("sandbox_violation").
	ErrViolation = errors.New("isolate: sandbox violation")
)

// JobError is the job's own refusal of its input, carried from the child:
// an HTTP status (400–599: the parent refuses anything else), a code and a
// message, all the child's to choose, so the caller must check Code against
// the codes it knows before it passes them on ("input_error").
type JobError struct {
	Status  int
	Code    string
	Message string
}

func (e *JobError) Error() string {
	return fmt.Sprintf("isolate: job error %d %s: %s", e.Status, e.Code, e.Message)
}

// CrashError is a child that died without answering, or answered outside
// the protocol (a malformed or over-long frame, a status out of range): it
// is killed, and its reason and stderr tail go to the log, never to the
// caller ("isolate_crashed").
type CrashError struct {
	// Reason says what happened, for the log: "signal segmentation fault",
	// "exit status 2", "bad frame: …".
	Reason string
}

func (e *CrashError) Error() string { return "isolate: child crashed: " + e.Reason }
