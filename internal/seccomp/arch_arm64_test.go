//go:build linux

package seccomp

// archRefusedCalls would list calls that exist only on arm64: there are none
// the filter needs to name (arm64 has only the *at forms of the file calls,
// which refusedCalls covers).
var archRefusedCalls []int
