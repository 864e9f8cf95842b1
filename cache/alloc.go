package cache

import (
	"slices"
	"sort"
	"sync"
)

// The byte bound charges each value what the Go allocator really gives it:
// its length rounded up to the allocator's size class (up to 32 KiB) or to
// whole pages (above), so Stats.Bytes never under-counts the heap a value
// holds. The small size classes are read from the running allocator once,
// at start: slices.Grow returns a slice whose capacity is the size class it
// was given, so walking capacities from 1 up lists the classes (about 68
// allocations, ~0.26 ms, on first use: never at package init, which every
// process of the binary runs, isolated children included), and no table in
// this file can fall out of step with the runtime.

const (
	smallMax = 32 << 10 // the largest small-object size class
	pageSize = 8 << 10  // the runtime's page, to which large objects are rounded
)

var sizeClasses = sync.OnceValue(probeSizeClasses)

func probeSizeClasses() []int {
	var classes []int
	for n := 1; n <= smallMax; {
		c := cap(slices.Grow([]byte(nil), n))
		classes = append(classes, c)
		n = c + 1
	}
	return classes
}

// allocSize is the bytes the allocator sets aside for a []byte of length n
// made by [newValue].
func allocSize(n int) int {
	if n == 0 {
		return 0
	}
	if n > smallMax {
		return (n + pageSize - 1) &^ (pageSize - 1)
	}
	classes := sizeClasses()
	return classes[sort.SearchInts(classes, n)]
}

// newValue allocates a value of length n whose capacity is allocSize(n).
func newValue(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	return slices.Grow([]byte(nil), n)[:n]
}
