//go:build linux

package procpool

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// sharedSpec names files from descriptor first on: "a=6,b=7".
func sharedSpec(files []*os.File, first int) string {
	var b strings.Builder
	for i, f := range files {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", f.Name(), first+i)
	}
	return b.String()
}

var sharedFiles = sync.OnceValue(func() map[string]int {
	m := map[string]int{}
	for _, kv := range strings.Split(os.Getenv(sharedEnv), ",") {
		name, v, ok := strings.Cut(kv, "=")
		if fd, err := strconv.Atoi(v); ok && err == nil && fd >= 3 {
			m[name] = fd
		}
	}
	return m
})

// SharedFile returns the descriptor the primary shared under name
// (Config.Shared): in a worker, or in a primary started by an upgrade,
// which passes it on to its own workers. It is nil in any other process, or
// if none was shared by that name. Call it once per name: the caller owns
// the file.
func SharedFile(name string) *os.File {
	fd, ok := sharedFiles()[name]
	if !ok {
		return nil
	}
	return os.NewFile(uintptr(fd), name)
}
