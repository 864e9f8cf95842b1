//go:build !linux || !(amd64 || arm64)

package seccomp

// Supported reports whether Install has a filter for this platform.
func Supported() bool { return false }

// Install returns ErrUnsupported: this platform has no filter.
func Install(Policy) error { return ErrUnsupported }
