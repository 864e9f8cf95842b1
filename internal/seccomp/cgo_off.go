//go:build linux && (amd64 || arm64) && !cgo

package seccomp

// cgoRules are the extra calls of a cgo build's thread start-up: none in a
// static build, where the runtime makes its threads itself.
func cgoRules() []rule { return nil }
