package cache

import (
	"encoding/binary"
	"io"
)

// The wire protocol between a Client and Memory.Serve (see doc.go). Every
// request is answered by exactly one reply, in order, on one connection.
const (
	opGet = 'G' // 'G' key[32]
	opPut = 'P' // 'P' key[32] len[4] value[len]
	// opStats asks for the server's Stats, as JSON in a hit's value; its
	// key is all zeros and ignored.
	opStats = 'S' // 'S' key[32]

	repHit    = 'H' // 'H' len[4] value[len]
	repMiss   = 'M' // 'M'
	repStored = 'O' // 'O'
	repError  = 'E' // 'E' reason[1]; the server then closes the connection, except after reasonFull

	reasonBad   = 'B' // an unknown op
	reasonLarge = 'L' // a put's length over the server's MaxEntry
	reasonFull  = 'F' // a put with no room: the value was read and dropped; the connection stays
)

// maxFrameValue bounds MaxEntry: lengths travel in 4 bytes, and no value
// of a gigabyte belongs in a cache shared over a socket.
const maxFrameValue = 1 << 30

// requestHeader is the longest request header: a put's op, key and length.
const requestHeader = 1 + len(Key{}) + 4

// readRequest reads the rest of a request's header, op already read: the
// key, and a put's value length. A refusal is a reason byte for the reply
// (the connection then closes); err is the reader's.
func readRequest(r io.Reader, op byte, maxEntry int) (k Key, n int, reason byte, err error) {
	switch op {
	case opGet, opPut, opStats:
	default:
		return k, 0, reasonBad, nil
	}
	if _, err = io.ReadFull(r, k[:]); err != nil {
		return k, 0, 0, err
	}
	if op != opPut {
		return k, 0, 0, nil
	}
	var l [4]byte
	if _, err = io.ReadFull(r, l[:]); err != nil {
		return k, 0, 0, err
	}
	// Compared as uint64: a length of 4 GiB is refused before anything of
	// its size is allocated.
	if n := binary.BigEndian.Uint32(l[:]); uint64(n) > uint64(maxEntry) {
		return k, 0, reasonLarge, nil
	}
	return k, int(binary.BigEndian.Uint32(l[:])), 0, nil
}
