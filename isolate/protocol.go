package isolate

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
)

// RoleEnv is the environment variable that makes this binary an isolate
// child; the same one procpool uses for workers.
const (
	RoleEnv     = "HYBRID_ROLE"
	RoleIsolate = "isolate"
	limitsEnv   = "HYBRID_ISOLATE_LIMITS" // JSON childLimits
)

// maxFrame bounds one frame's payload, in both directions.
const maxFrame = 1 << 30

// header precedes the payload of every frame.
type header struct {
	// Request.
	Workload string            `json:"workload,omitempty"`
	Params   map[string]string `json:"params,omitempty"`
	// Response.
	Status  int    `json:"status,omitempty"` // 0: ok, else an HTTP status
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Both.
	Size int `json:"size"`
}

func writeFrame(w *bufio.Writer, h header, payload []byte) error {
	h.Size = len(payload)
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	w.Write(b)
	w.WriteByte('\n')
	w.Write(payload)
	return w.Flush()
}

func readFrame(r *bufio.Reader) (header, []byte, error) {
	var h header
	line, err := r.ReadSlice('\n')
	if err != nil {
		return h, nil, err // io.EOF: no more frames
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, nil, fmt.Errorf("isolate: bad frame header: %w", err)
	}
	if h.Size < 0 || h.Size > maxFrame {
		return h, nil, fmt.Errorf("isolate: frame size %d out of bounds", h.Size)
	}
	payload := make([]byte, h.Size)
	if _, err := io.ReadFull(r, payload); err != nil {
		return h, nil, fmt.Errorf("isolate: short frame: %w", err)
	}
	return h, payload, nil
}
