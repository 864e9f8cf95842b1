package isolate

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// RoleEnv is the environment variable that gives a re-executed hybrid its
// role; the same one procpool uses for workers. Only a parent sets it.
const (
	RoleEnv = "HYBRID_ROLE"
	// RoleChild is an isolate child: it serves frames ([Serve]).
	RoleChild = "isolate"
	// RoleProbe is the isolator's start-up probe: it applies a child's
	// confinement and exits 0 ([Probe]).
	RoleProbe = "isolate-probe"
	limitsEnv = "HYBRID_ISOLATE_LIMITS" // JSON childLimits
)

// inputFD is the child's descriptor of its input file: a memfd the parent
// writes each request's input into, open read-only in the child (see
// newInputFile). A request frame's Size says how many of its bytes are the
// input; nothing follows a request's header on the pipe.
const inputFD = 3

// maxRequest bounds a request frame's payload: the parent is trusted, this
// only stops a runaway.
const maxRequest = 1 << 30

// maxHeaderLine bounds a frame's JSON header line (the bufio buffer): a
// longer one is a framing error, never buffered.
const maxHeaderLine = 64 << 10

// header precedes the payload of every frame.
type header struct {
	// Request.
	Job    string            `json:"job,omitempty"`
	Params map[string]string `json:"params,omitempty"`
	Heap   int               `json:"heap,omitempty"` // Job.Heap
	// Response: 0 is success; otherwise a *JobError with this status,
	// which must be 400–599.
	Status  int    `json:"status,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Both: the payload's length in bytes. A request's payload is in the
	// input file (inputFD), a response's follows its header on stdout.
	Size int `json:"size"`
}

// errFraming is a frame that does not follow the protocol: from a child, a
// lie (it is killed and the run is a crash).
var errFraming = errors.New("isolate: bad frame")

// writeFrame writes a response: its header, then the payload.
func writeFrame(w *bufio.Writer, h header, payload []byte) error {
	h.Size = len(payload)
	return writeHeader(w, h, payload)
}

// writeHeader writes h (with its Size as set), then payload, if any.
func writeHeader(w *bufio.Writer, h header, payload []byte) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	w.Write(b)
	w.WriteByte('\n')
	w.Write(payload)
	return w.Flush()
}

// readFrame reads one frame whose payload may be at most limit bytes. The
// header line is bounded by r's buffer (maxHeaderLine).
func readFrame(r *bufio.Reader, limit int) (header, []byte, error) {
	h, err := readHeader(r, limit)
	if err != nil {
		return h, nil, err
	}
	payload, err := readPayload(r, h)
	return h, payload, err
}

// readHeader reads a frame's header line, of a payload of at most limit.
func readHeader(r *bufio.Reader, limit int) (header, error) {
	var h header
	line, err := r.ReadSlice('\n')
	if err == io.EOF && len(line) == 0 {
		return h, io.EOF // no more frames
	}
	if err != nil {
		return h, fmt.Errorf("%w: header: %v", errFraming, err)
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, fmt.Errorf("%w: header: %v", errFraming, err)
	}
	if h.Size < 0 || h.Size > limit {
		return h, fmt.Errorf("%w: payload of %d bytes, limit %d", errFraming, h.Size, limit)
	}
	return h, nil
}

// readPayload reads h's payload as it arrives: memory follows the bytes
// that come, not the size the header claims (a lying child's 190 MiB claim
// held that much for the whole timeout).
func readPayload(r *bufio.Reader, h header) ([]byte, error) {
	payload := make([]byte, 0, min(h.Size, 1<<20))
	for len(payload) < h.Size {
		if len(payload) == cap(payload) {
			payload = slices.Grow(payload, min(h.Size, 2*cap(payload))-len(payload))
		}
		n, err := r.Read(payload[len(payload):min(cap(payload), h.Size)])
		payload = payload[:len(payload)+n]
		if err != nil && len(payload) < h.Size {
			return nil, fmt.Errorf("%w: payload: %v", errFraming, err)
		}
	}
	return payload, nil
}
