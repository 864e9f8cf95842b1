package cache

import "errors"

// The errors a store returns. A caller treats every error as a miss (the
// result is computed again) and may count it; none of them is the
// client's fault, so none maps to an HTTP status of its own.
var (
	// ErrTooLarge: a value over the store's MaxEntry. Put refuses it and
	// stores nothing (counted in Stats.TooLarge); a value over MaxEntry read
	// back from a server or from Redis is this error too (counted in
	// Stats.Errors), and is never returned.
	ErrTooLarge = errors.New("cache: value over MaxEntry")
	// ErrFull: a Put found no room even after evicting every entry, because
	// values still being received over the socket hold the byte bound
	// (MaxBytes counts them from the moment their length is read).
	ErrFull = errors.New("cache: no room: values in flight hold the byte bound")
	// ErrProtocol: a reply from the box's cache server that the protocol
	// does not allow (an unknown reply byte, a refusal of a well-formed
	// request). The connection is dropped.
	ErrProtocol = errors.New("cache: protocol error")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("cache: client closed")
)
