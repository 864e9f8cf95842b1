package procpool

import "errors"

// Errors of the run-time controls ([Supervisor.Reload], [Supervisor.Upgrade],
// [Supervisor.Scale], [Supervisor.SetPoolSize]). Each is returned wrapped
// with the detail; test for them with errors.Is.
var (
	// ErrBusy: a reload or an upgrade is running; ask again once it has
	// ended. The admin endpoint answers it with 409.
	ErrBusy = errors.New("procpool: a reload or an upgrade is running")
	// ErrInvalid: an argument outside its documented range.
	ErrInvalid = errors.New("procpool: invalid argument")
	// ErrRolledBack: an upgrade's new primary, or one of its workers, did
	// not become ready within Config.StartTimeout; it was stopped and the
	// old primary keeps serving.
	ErrRolledBack = errors.New("procpool: upgrade rolled back")
	// ErrUnsupported: the operation cannot run in this process: an upgrade
	// when the primary is PID 1.
	ErrUnsupported = errors.New("procpool: not supported here")
	// ErrStopped: the supervisor is shutting down or has stopped.
	ErrStopped = errors.New("procpool: shutting down")
)
