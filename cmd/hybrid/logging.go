package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
)

// newLogger returns the process's logger: every line carries the pid and the
// role, and a worker's lines its worker id.
func newLogger(w io.Writer, format, level, role string, worker int) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch format {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
	log := slog.New(h).With("pid", os.Getpid(), "role", role)
	if worker > 0 {
		log = log.With("worker", worker)
	}
	return log, nil
}
