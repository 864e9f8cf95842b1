//go:build race

package main

// raceEnabled reports a race-detector build: `hybrid version` says so, and
// the integration tests build the binary they drive the same way.
const raceEnabled = true
