package isolate

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := bufio.NewWriter(&buf)
	payload := bytes.Repeat([]byte{0, '\n', 0xff}, 1000)
	if err := writeFrame(w, header{Workload: "hash", Params: map[string]string{"algo": "sha256"}}, payload); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(w, header{Status: 422, Code: "bad_image", Message: "no"}, nil); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(&buf)
	h, got, err := readFrame(r)
	if err != nil || h.Workload != "hash" || h.Params["algo"] != "sha256" || !bytes.Equal(got, payload) {
		t.Fatalf("first frame = %+v, %d bytes, %v", h, len(got), err)
	}
	h, got, err = readFrame(r)
	if err != nil || h.Status != 422 || h.Code != "bad_image" || len(got) != 0 {
		t.Fatalf("second frame = %+v, %d bytes, %v", h, len(got), err)
	}
	if _, _, err := readFrame(r); !errors.Is(err, io.EOF) {
		t.Errorf("after the last frame: %v; want io.EOF", err)
	}
}

func TestBadFrames(t *testing.T) {
	for _, in := range []string{
		"not json\n",
		`{"size":-1}` + "\n",
		`{"size":2147483648}` + "\n",
		`{"size":10}` + "\nshort",
	} {
		if _, _, err := readFrame(bufio.NewReader(bytes.NewBufferString(in))); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("readFrame(%q) = %v; want a framing error", in, err)
		}
	}
}
