//go:build !race

package main

// raceEnabled reports a race-detector build (see race.go).
const raceEnabled = false
