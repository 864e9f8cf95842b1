package bench

import (
	"bytes"
	"fmt"
	"image/jpeg"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"

	"github.com/hybrid-server/hybrid/internal/sampleimages"
)

// Workload is a named request to a hybrid server. Bodies are generated
// deterministically (fixed seeds) the first time they are needed, so runs
// on any machine send the same bytes and nothing big is committed.
type Workload struct {
	Name string
	Desc string
	// Method and Path (with any query) of the request.
	Method, Path string
	// Modal workloads take ?mode=inline|pool|isolate; the others (health)
	// have one mode, "-".
	Modal       bool
	ContentType string
	body        func() []byte
}

// Body is the request body (nil for none), built once and shared.
func (w Workload) Body() []byte {
	if w.body == nil {
		return nil
	}
	return w.body()
}

// Target is the request against a server at base (http://host:port), in
// mode when the workload is modal and mode is not "".
func (w Workload) Target(base, mode string) Target {
	u := strings.TrimRight(base, "/") + w.Path
	if w.Modal && mode != "" && mode != "-" {
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		u += sep + "mode=" + url.QueryEscape(mode)
	}
	t := Target{Method: w.Method, URL: u, Body: w.Body()}
	if w.ContentType != "" {
		t.Header = [][2]string{{"Content-Type", w.ContentType}}
	}
	return t
}

// Workloads are the named scenarios, in the order tables list them.
var Workloads = []Workload{
	{Name: "health", Desc: "GET /health: the server's floor", Method: "GET", Path: "/health"},
	{Name: "hash-64k", Desc: "sha256 of 64 KiB", Method: "POST", Path: "/v1/hash/sha256", Modal: true,
		ContentType: "application/octet-stream", body: sync.OnceValue(func() []byte { return randomBytes(64<<10, 1) })},
	{Name: "hash-1m", Desc: "blake3 of 1 MiB", Method: "POST", Path: "/v1/hash/blake3", Modal: true,
		ContentType: "application/octet-stream", body: sync.OnceValue(func() []byte { return randomBytes(1<<20, 2) })},
	{Name: "password", Desc: "argon2id at OWASP defaults (m=19456 KiB, t=2, p=1)", Method: "POST", Path: "/v1/password/hash/argon2id", Modal: true,
		ContentType: "application/json", body: func() []byte { return []byte(`{"password":"correct horse battery staple"}`) }},
	{Name: "thumbnail", Desc: "12 MP JPEG → 400 px wide JPEG", Method: "POST", Path: "/v1/image/resize?width=400&format=jpeg", Modal: true,
		ContentType: "image/jpeg", body: sync.OnceValue(photoJPEG)},
	{Name: "compress-1m", Desc: "zstd (level 3) of 1 MiB of text", Method: "POST", Path: "/v1/compress/zstd?level=3", Modal: true,
		ContentType: "text/plain", body: sync.OnceValue(func() []byte { return text(1<<20, 3) })},
}

// LookupWorkload finds a workload by name.
func LookupWorkload(name string) (Workload, error) {
	for _, w := range Workloads {
		if w.Name == name {
			return w, nil
		}
	}
	names := make([]string, len(Workloads))
	for i, w := range Workloads {
		names[i] = w.Name
	}
	return Workload{}, fmt.Errorf("unknown workload %q (known: %s)", name, strings.Join(names, ", "))
}

// Modes are the execution modes of a hybrid workload.
var Modes = []string{"inline", "pool", "isolate"}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// text is n bytes of word salad from a fixed vocabulary: compressible like
// prose (zstd level 3 gets about 3×), not like a repeated string.
func text(n int, seed uint64) []byte {
	words := strings.Fields(`the of and to in is that for it as was with be by on not he this are or his from at which but
		have an they you were her one all we can their there been has more if will would who so no when what up out
		time about into than them only other new some could these two may then first any like now my such make over our
		even most after also did many before must through back years where much your way well down should because each
		just those people how too little state good very world still own see men work long get here between both life
		being under never day same another know while last might us great old year off come since against go came right
		used take three server worker process request thread socket memory latency cluster primary signal queue image`)
	r := rand.New(rand.NewPCG(seed, seed*31+7))
	var b bytes.Buffer
	b.Grow(n + 16)
	line := 0
	for b.Len() < n {
		w := words[r.IntN(len(words))]
		if line == 0 {
			w = strings.ToUpper(w[:1]) + w[1:]
		}
		b.WriteString(w)
		line += len(w) + 1
		switch {
		case line > 72:
			b.WriteString(".\n")
			line = 0
		case r.IntN(12) == 0:
			b.WriteString(", ")
		default:
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// photoJPEG is a 4000×3000 (12 MP) photo-like JPEG at quality 85, with
// sensor-like grain so that its entropy-coded data is as big as a camera's
// (about 3 MB; smooth gradients alone would make 0.4 MB and decode faster
// than any real photo).
func photoJPEG() []byte {
	img := sampleimages.Photo(4000, 3000)
	r := rand.New(rand.NewPCG(4, 4))
	for i := range img.Pix {
		if i%4 == 3 {
			continue // alpha
		}
		v := int(img.Pix[i]) + r.IntN(41) - 20
		img.Pix[i] = uint8(min(max(v, 0), 255))
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 85}); err != nil {
		panic("bench: encoding the thumbnail source: " + err.Error()) // in-memory encode of a valid image
	}
	return b.Bytes()
}
