package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
	"github.com/hybrid-server/hybrid/isolate"
)

// FuzzImageInIsolate feeds every input to the image workloads inside a real
// isolate child of the built binary: whatever the bytes, the outcome is an
// image or a client error (4xx), never a crash, a timeout or a memory kill.
// Each input costs one child (~35 ms), so a short run covers hundreds.
func FuzzImageInIsolate(f *testing.F) {
	f.Add(sampleimages.PNGHeader(16, 16), "16")
	f.Add(sampleimages.JPEGHeader(40000, 40000), "100")
	f.Add(sampleimages.GIFFrames(5), "8")
	f.Add([]byte("\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*"), "10")
	iso, err := isolate.New(isolate.Config{Exe: binPath, Timeout: 5 * time.Second, Memory: 256 << 20, Warm: -1},
		slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { iso.Close() })
	f.Fuzz(func(t *testing.T, input []byte, width string) {
		for _, name := range []string{"image-info", "image-resize"} {
			job := isolate.Job{Name: name, Params: map[string]string{"width": width, "max_pixels": "4000000"}, MaxOutput: 64 << 20}
			_, err := iso.Run(context.Background(), job, input)
			var je *isolate.JobError
			if err != nil && (!errors.As(err, &je) || je.Status >= 500) {
				t.Fatalf("%s of %d bytes (width %q): %v", name, len(input), width, err)
			}
		}
	})
}
