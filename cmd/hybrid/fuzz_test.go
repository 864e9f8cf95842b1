package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/handlers"
	"github.com/hybrid-server/hybrid/internal/testimages"
	"github.com/hybrid-server/hybrid/isolate"
	"github.com/hybrid-server/hybrid/server"
)

// FuzzImageInIsolate feeds every input to the image workloads inside a real
// isolate child of the built binary: whatever the bytes, the outcome is an
// image or a client error (4xx), never a crash, a timeout or a memory kill.
// Each input costs one child (~35 ms), so a short run covers hundreds.
func FuzzImageInIsolate(f *testing.F) {
	f.Add(testimages.PNGHeader(16, 16), "16")
	f.Add(testimages.JPEGHeader(40000, 40000), "100")
	f.Add(testimages.GIFFrames(5), "8")
	f.Add([]byte("\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*"), "10")
	iso, err := isolate.New(isolate.Config{Exe: binPath, Timeout: 5 * time.Second, Memory: 256 << 20, Warm: -1},
		slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { iso.Close() })
	f.Fuzz(func(t *testing.T, input []byte, width string) {
		for _, name := range []string{"image-info", "image-resize"} {
			_, err := iso.Run(context.Background(), name, handlers.Params{"width": width, "max_pixels": "4000000"}, input)
			var se *server.Error
			if err != nil && (!errors.As(err, &se) || se.Status >= 500 || se.Code == isolate.CodeMemory) {
				t.Fatalf("%s of %d bytes (width %q): %v", name, len(input), width, err)
			}
		}
	})
}
