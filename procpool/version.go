package procpool

import (
	"runtime/debug"
	"sync"
)

// Version is this binary's release version. It is empty unless set at link
// time:
//
//	go build -ldflags "-X github.com/hybrid-server/hybrid/procpool.Version=v1.4.0" ./cmd/hybrid
//
// Empty, [BuildInfo] reports the module version the go command stamped
// ("(devel)" for a build from a work tree).
var Version string

var buildOnce = sync.OnceValues(func() (version, build string) {
	version = Version
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if version == "" {
			version = "(unknown)"
		}
		return version, ""
	}
	if version == "" {
		version = bi.Main.Version
	}
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			build = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if len(build) > 12 {
		build = build[:12]
	}
	if modified {
		build += "+dirty"
	}
	return version, build
})

// BuildInfo returns this binary's version ([Version], else the module
// version) and build: the VCS revision it was built from, cut to 12 hex
// digits, with "+dirty" if the work tree had uncommitted changes; empty
// without VCS information (go build -buildvcs=false, or outside a
// repository).
func BuildInfo() (version, build string) { return buildOnce() }
