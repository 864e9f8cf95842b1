package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"
)

// A client that writes its whole request before it reads anything, as
// Python's urllib and requests do, reads the JSON 413 for a body far over
// --max-body: the worker answers early, then closes with a lingering close
// (shut down its write side, discard what the client still sends) instead of
// closing with unread data, which makes the kernel send RST.
func TestEarly413ReadableByWholeBodyWriters(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--max-body", "1MiB")
	const (
		tries    = 200
		parallel = 8
		bodySize = 16 << 20
	)
	head := fmt.Sprintf("POST /v1/hash/sha256 HTTP/1.1\r\nHost: hybrid\r\n"+
		"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", bodySize)
	chunk := make([]byte, 1<<20)

	var (
		mu   sync.Mutex
		errs = map[string]int{}
		wg   sync.WaitGroup
	)
	jobs := make(chan int)
	start := time.Now()
	for range parallel {
		wg.Go(func() {
			for range jobs {
				if step, err := writeWholeThenRead(c.addr, head, chunk, bodySize); err != nil {
					mu.Lock()
					errs[step+": "+errText(err)]++
					mu.Unlock()
				}
			}
		})
	}
	for i := range tries {
		jobs <- i
	}
	close(jobs)
	wg.Wait()

	failed := 0
	var lines []string
	for e, n := range errs {
		failed += n
		lines = append(lines, fmt.Sprintf("%dx %s", n, e))
	}
	sort.Strings(lines)
	t.Logf("%d tries of a %d MiB body against --max-body 1MiB, %d at a time, in %v: %d could not read the 413 %v",
		tries, bodySize>>20, parallel, time.Since(start).Round(time.Millisecond), failed, lines)
	if failed > 0 {
		t.Errorf("%d of %d whole-body writers could not read the 413; want 0", failed, tries)
	}
}

// writeWholeThenRead sends head and size bytes of body (in chunk-sized
// writes) completely, and only then reads the response, which must be the
// JSON 413 with code body_too_large. step names where it failed.
func writeWholeThenRead(addr, head string, chunk []byte, size int) (step string, err error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "dial", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		return "write headers", err
	}
	for sent := 0; sent < size; sent += len(chunk) {
		if _, err := conn.Write(chunk[:min(len(chunk), size-sent)]); err != nil {
			return "write body", err
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "read response", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "read body", err
	}
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge || json.Unmarshal(body, &e) != nil || e.Error.Code != "body_too_large" {
		return "response", fmt.Errorf("%s %q; want 413 body_too_large", resp.Status, body)
	}
	return "", nil
}
