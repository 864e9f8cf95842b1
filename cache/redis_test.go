package cache

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/redistest"
	"github.com/hybrid-server/hybrid/internal/resp"
)

func newRedisClient(t *testing.T, url string, tweak func(*resp.Options)) *resp.Client {
	t.Helper()
	opt, err := resp.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	if tweak != nil {
		tweak(&opt)
	}
	rdb := resp.New(opt)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func TestRedisRoundTrip(t *testing.T) {
	s := redistest.Start(t)
	r := NewRedis(newRedisClient(t, s.URL(), nil), RedisConfig{Prefix: "t:", Timeout: time.Second})
	val := bytes.Repeat([]byte("result\x00"), 3000)
	if _, ok := mustGet(t, r, key(1)); ok {
		t.Fatal("Get on an empty Redis hit")
	}
	mustPut(t, r, key(1), val)
	if v, ok := mustGet(t, r, key(1)); !ok || !bytes.Equal(v, val) {
		t.Fatalf("Get after Put = %d bytes, %v; want the %d bytes put", len(v), ok, len(val))
	}
	// The key is the prefix and the key in hex.
	k := key(1)
	if got, err := s.Do("STRLEN", "t:"+k.String()); got != ":"+strconv.Itoa(len(val)) {
		t.Errorf("STRLEN t:%s = %q, %v; want :%d", k, got, err, len(val))
	}
	// An empty value is never stored: GETRANGE cannot tell it from a miss.
	mustPut(t, r, key(2), nil)
	if _, ok := mustGet(t, r, key(2)); ok {
		t.Error("Get of an empty value hit")
	}
	if got, want := r.Stats(), (Stats{Hits: 1, Misses: 2, Puts: 1}); got != want {
		t.Errorf("Stats = %+v; want %+v", got, want)
	}
}

func TestRedisTTL(t *testing.T) {
	s := redistest.Start(t)
	r := NewRedis(newRedisClient(t, s.URL(), nil), RedisConfig{TTL: 90 * time.Second, Timeout: time.Second})
	mustPut(t, r, key(1), []byte("v"))
	k := key(1)
	got, err := s.Do("PTTL", DefaultRedisPrefix+k.String())
	if err != nil {
		t.Fatal(err)
	}
	ms, err := strconv.Atoi(strings.TrimPrefix(got, ":"))
	if err != nil || ms <= 85_000 || ms > 90_000 {
		t.Errorf("PTTL = %q; want about 90000 ms", got)
	}
}

func TestRedisTooLarge(t *testing.T) {
	s := redistest.Start(t)
	r := NewRedis(newRedisClient(t, s.URL(), nil), RedisConfig{MaxEntry: 1000, Timeout: time.Second})
	if err := r.Put(bg, key(1), make([]byte, 1001)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put of 1001 bytes with MaxEntry 1000 = %v; want ErrTooLarge", err)
	}
	k := key(1)
	if got, _ := s.Do("EXISTS", DefaultRedisPrefix+k.String()); got != ":0" {
		t.Errorf("EXISTS after a refused Put = %q; want :0", got)
	}
	mustPut(t, r, key(2), make([]byte, 1000))
	// A value over MaxEntry stored by someone else is an error, never a
	// value: GETRANGE reads at most MaxEntry+1 bytes of it.
	k = key(3)
	if _, err := s.Do("SET", DefaultRedisPrefix+k.String(), strings.Repeat("x", 5000)); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := r.Get(bg, key(3)); ok || v != nil || !errors.Is(err, ErrTooLarge) {
		t.Errorf("Get of a stored 5000-byte value with MaxEntry 1000 = %d bytes, %v, %v; want ErrTooLarge", len(v), ok, err)
	}
	if v, ok := mustGet(t, r, key(2)); !ok || len(v) != 1000 {
		t.Errorf("Get of a value of exactly MaxEntry = %d bytes, %v", len(v), ok)
	}
	if got, want := r.Stats(), (Stats{Hits: 1, Puts: 1, TooLarge: 1, Errors: 1}); got != want {
		t.Errorf("Stats = %+v; want %+v", got, want)
	}
}

// TestRedisStopRestart stops Redis under a client: calls fail within the
// Timeout (with slack for a loaded machine) instead of hanging, and work
// again once Redis is back.
func TestRedisStopRestart(t *testing.T) {
	const timeout = 100 * time.Millisecond
	const slack = 400 * time.Millisecond
	s := redistest.Start(t)
	r := NewRedis(newRedisClient(t, s.URL(), nil), RedisConfig{Timeout: timeout})
	mustPut(t, r, key(1), []byte("v"))
	s.Stop()
	start := time.Now()
	_, ok, err := r.Get(bg, key(1))
	if took := time.Since(start); err == nil || ok || took > timeout+slack {
		t.Errorf("Get with Redis stopped = %v, %v after %v; want an error within %v", ok, err, took, timeout)
	}
	start = time.Now()
	err = r.Put(bg, key(2), []byte("w"))
	if took := time.Since(start); err == nil || took > timeout+slack {
		t.Errorf("Put with Redis stopped = %v after %v; want an error within %v", err, took, timeout)
	}
	s.Restart()
	mustPut(t, r, key(2), []byte("w"))
	if v, ok := mustGet(t, r, key(2)); !ok || string(v) != "w" {
		t.Errorf("Get after the restart = %q, %v; want the value put after it", v, ok)
	}
	if st := r.Stats(); st.Errors != 2 {
		t.Errorf("Stats = %+v; want 2 errors", st)
	}
}

// TestRedisHang points the store at a server that accepts and never
// answers, through a client whose own Timeout is a minute: each call
// still returns within the store's Timeout, those waiting for one of the
// client's 2 connections too, and the server never sees more than 2
// connections open; none is left open after the calls.
func TestRedisHang(t *testing.T) {
	const timeout = 100 * time.Millisecond
	const slack = 400 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var open, most atomic.Int32
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n := open.Add(1); n > most.Load() {
				most.Store(n)
			}
			wg.Go(func() {
				io.Copy(io.Discard, c) // never answered, until the client closes
				c.Close()
				open.Add(-1)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	rdb := newRedisClient(t, "redis://"+ln.Addr().String()+"/0", func(o *resp.Options) {
		o.Timeout, o.PoolSize = time.Minute, 2
	})
	r := NewRedis(rdb, RedisConfig{Timeout: timeout})
	var calls sync.WaitGroup
	for i := range 6 {
		calls.Go(func() {
			start := time.Now()
			var err error
			if i%2 == 0 {
				_, _, err = r.Get(bg, key(1))
			} else {
				err = r.Put(bg, key(1), []byte("v"))
			}
			if took := time.Since(start); err == nil || took > timeout+slack {
				t.Errorf("a call to a server that never answers = %v after %v; want an error within %v", err, took, timeout)
			}
		})
	}
	calls.Wait()
	if st := r.Stats(); st.Errors != 6 {
		t.Errorf("Stats = %+v; want 6 errors", st)
	}
	if m := most.Load(); m > 2 {
		t.Errorf("the server saw %d connections open at once; want at most the client's 2", m)
	}
	for deadline := time.Now().Add(2 * time.Second); open.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after the calls timed out", open.Load())
		}
	}
}

func TestRedisConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg RedisConfig
		ok  bool
	}{
		{RedisConfig{}, true},
		{RedisConfig{Prefix: "p:", TTL: time.Hour, MaxEntry: 1, Timeout: time.Second}, true},
		{RedisConfig{TTL: time.Microsecond}, false},
		{RedisConfig{Timeout: -1}, false},
		{RedisConfig{MaxEntry: -1}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate() = %v; want ok %v", tc.cfg, err, tc.ok)
		}
	}
}
