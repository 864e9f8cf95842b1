package isolate

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	payload := bytes.Repeat([]byte{0, '\n', 0xff}, 1000)
	if err := writeFrame(w, header{Job: "hash", Params: map[string]string{"algo": "sha256"}}, payload); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(w, header{Status: 422, Code: "bad_image", Message: "no"}, nil); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(&buf)
	h, got, err := readFrame(r, len(payload))
	if err != nil || h.Job != "hash" || h.Params["algo"] != "sha256" || !bytes.Equal(got, payload) {
		t.Fatalf("first frame = %+v, %d bytes, %v", h, len(got), err)
	}
	h, got, err = readFrame(r, 0)
	if err != nil || h.Status != 422 || h.Code != "bad_image" || len(got) != 0 {
		t.Fatalf("second frame = %+v, %d bytes, %v", h, len(got), err)
	}
	if _, _, err := readFrame(r, 0); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v; want io.EOF", err)
	}
}

// What a lying child can send: each is a framing error, read without
// buffering more than the limit or the header line.
func TestBadFrames(t *testing.T) {
	for _, in := range []string{
		"not json\n",
		`{"size":-1}` + "\n",
		`{"size":1073741824}` + "\n", // claims 1 GiB against a limit of 1 MiB
		`{"size":10}` + "\nshort",
		`{"size":1`, // no end of line
		`{"message":"` + strings.Repeat("x", 2*maxHeaderLine) + `","size":0}` + "\n",
	} {
		r := bufio.NewReaderSize(bytes.NewBufferString(in), maxHeaderLine)
		if _, _, err := readFrame(r, 1<<20); !errors.Is(err, errFraming) {
			t.Errorf("readFrame(%.40q…) = %v; want a framing error", in, err)
		}
	}
}
