//go:build linux && !testhooks

package isolate

// registerFaults registers nothing in a release build: the fault workloads
// exist only in test builds (-tags testhooks, faults.go).
func registerFaults() {}
