package cache

import (
	"bufio"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"lukechampine.com/blake3"
)

// BenchmarkNewKey hashes the key of a 3.6 MB upload with BLAKE3 (what
// NewKey does) and with SHA-256 over the same encoding, the comparison
// doc.go reports.
func BenchmarkNewKey(b *testing.B) {
	input := make([]byte, 3_600_000)
	rand.NewChaCha8([32]byte{}).Read(input)
	params := map[string]string{"w": "320", "h": "240", "fmt": "webp", "q": "80"}
	b.Run("blake3", func(b *testing.B) {
		b.SetBytes(int64(len(input)))
		for b.Loop() {
			h := blake3.New(32, nil)
			writeKey(h, "thumbnail", params, input)
			h.Sum(nil)
		}
	})
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(input)))
		for b.Loop() {
			h := sha256.New()
			writeKey(h, "thumbnail", params, input)
			h.Sum(nil)
		}
	})
}

// BenchmarkClientGet is a worker's hit for a 20 KB result: one round
// trip over a real unix socket to a Memory served in this process.
func BenchmarkClientGet(b *testing.B) {
	ln, path, err := Listen(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	m := NewMemory(MemoryConfig{})
	done := make(chan error, 1)
	go func() { done <- m.Serve(ln) }()
	defer func() { ln.Close(); <-done }()
	c := NewClient(path, ClientConfig{})
	defer c.Close()
	k := key(1)
	if err := c.Put(bg, k, make([]byte, 20_000)); err != nil {
		b.Fatal(err)
	}
	b.Run("hit-20KB", func(b *testing.B) {
		b.SetBytes(20_000)
		for b.Loop() {
			if _, ok, err := c.Get(bg, k); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		miss := key(2)
		for b.Loop() {
			if _, ok, err := c.Get(bg, miss); ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("hit-20KB-parallel", func(b *testing.B) {
		b.SetBytes(20_000)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, ok, err := c.Get(bg, k); !ok || err != nil {
					b.Error(ok, err)
					return
				}
			}
		})
	})
}

// BenchmarkClientGetProcess is BenchmarkClientGet with the server in a
// process of its own, as the primary is: the figure doc.go reports.
func BenchmarkClientGetProcess(b *testing.B) {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	cmd := exec.Command(exe, "-test.run=^$", "--", dir)
	cmd.Env = []string{"CACHE_TEST_HELPER=serve", "GORACE=atexit_sleep_ms=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
		b.Fatalf("server process said %q, %v", line, err)
	}
	c := NewClient(filepath.Join(dir, SocketName), ClientConfig{})
	defer c.Close()
	k := key(1)
	if err := c.Put(bg, k, make([]byte, 20_000)); err != nil {
		b.Fatal(err)
	}
	b.Run("hit-20KB", func(b *testing.B) {
		b.SetBytes(20_000)
		for b.Loop() {
			if _, ok, err := c.Get(bg, k); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		miss := key(2)
		for b.Loop() {
			if _, ok, err := c.Get(bg, miss); ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}

// BenchmarkMemoryGet is a hit in the primary's own Memory (or a process
// that holds one): a lock, a map lookup, a move to the list's front.
func BenchmarkMemoryGet(b *testing.B) {
	m := NewMemory(MemoryConfig{})
	for i := range 10_000 {
		m.Put(bg, key(i), make([]byte, 20_000))
	}
	keys := make([]Key, 1024)
	for i := range keys {
		keys[i] = key(i * 7)
	}
	b.Run("hit", func(b *testing.B) {
		i := 0
		for b.Loop() {
			m.Get(bg, keys[i&1023])
			i++
		}
	})
	b.Run("hit-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				m.Get(bg, keys[i&1023])
				i++
			}
		})
	})
}

func BenchmarkMatchETag(b *testing.B) {
	tag := key(1).ETag()
	header := []byte(`W/"0123456789abcdef", "` + key(2).ETag()[1:] + `, ` + tag)
	for b.Loop() {
		MatchETag(header, tag)
	}
}
