package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

var bg = context.Background()

// fakeClock is a Memory's clock that moves only when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Duration
}

func (c *fakeClock) read() time.Duration  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) step(d time.Duration) { c.mu.Lock(); c.now += d; c.mu.Unlock() }

func newTestMemory(t testing.TB, cfg MemoryConfig) (*Memory, *fakeClock) {
	t.Helper()
	m := NewMemory(cfg)
	clk := &fakeClock{}
	m.clock = clk.read
	return m, clk
}

func key(i int) Key { return NewKey("test", nil, []byte(fmt.Sprint(i))) }

func mustGet(t *testing.T, s Store, k Key) ([]byte, bool) {
	t.Helper()
	v, ok, err := s.Get(bg, k)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return v, ok
}

func mustPut(t *testing.T, s Store, k Key, v []byte) {
	t.Helper()
	if err := s.Put(bg, k, v); err != nil {
		t.Fatalf("Put(%d bytes): %v", len(v), err)
	}
}

func TestMemoryLRUOrder(t *testing.T) {
	// Room for exactly 3 entries of 100 bytes.
	m, _ := newTestMemory(t, MemoryConfig{MaxBytes: 3 * charge(100), MaxEntry: 100})
	val := make([]byte, 100)
	for i := range 3 {
		mustPut(t, m, key(i), val)
	}
	mustGet(t, m, key(0)) // 0 becomes the most recent: 1 is the oldest now
	mustPut(t, m, key(3), val)
	for i, want := range []bool{true, false, true, true} {
		if _, ok := mustGet(t, m, key(i)); ok != want {
			t.Errorf("after using 0 and adding 3: Get(%d) ok = %v; want %v", i, ok, want)
		}
	}
	// 2 is now the least recently used (the Gets above touched 0, 2, 3 in
	// that order).
	mustPut(t, m, key(4), val)
	if _, ok := mustGet(t, m, key(0)); ok {
		t.Errorf("Get(0) hit; want it evicted as the least recently used")
	}
	if s := m.Stats(); s.Evictions != 2 || s.Entries != 3 {
		t.Errorf("Stats = %+v; want 2 evictions, 3 entries", s)
	}
}

func TestMemoryCountersExact(t *testing.T) {
	m, clk := newTestMemory(t, MemoryConfig{MaxBytes: 2 * charge(10), MaxEntry: 10, TTL: time.Minute})
	mustPut(t, m, key(1), []byte("a"))                                            // puts 1
	mustGet(t, m, key(1))                                                         // hits 1
	mustGet(t, m, key(2))                                                         // misses 1
	if err := m.Put(bg, key(3), make([]byte, 11)); !errors.Is(err, ErrTooLarge) { // tooLarge 1
		t.Fatalf("Put of 11 bytes over MaxEntry 10 = %v; want ErrTooLarge", err)
	}
	mustPut(t, m, key(2), []byte("bb"))  // puts 2
	mustPut(t, m, key(3), []byte("ccc")) // puts 3, evicts 1
	mustPut(t, m, key(3), []byte("ccc")) // puts 4, replaces 3: no eviction
	clk.step(time.Minute)
	mustGet(t, m, key(2)) // expired 1, misses 2
	want := Stats{Hits: 1, Misses: 2, Puts: 4, Evictions: 1, Expired: 1, TooLarge: 1,
		Bytes: charge(3), Entries: 1}
	if got := m.Stats(); got != want {
		t.Errorf("Stats =\n %+v; want\n %+v", got, want)
	}
}

func TestMemoryTTL(t *testing.T) {
	m, clk := newTestMemory(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 1 << 10, TTL: 10 * time.Second})
	mustPut(t, m, key(1), []byte("one"))
	clk.step(9 * time.Second)
	mustPut(t, m, key(2), []byte("two"))
	if _, ok := mustGet(t, m, key(1)); !ok {
		t.Fatal("Get at 9 s of a 10 s TTL missed")
	}
	clk.step(time.Second) // 1 is 10 s old, 2 is 1 s old
	if _, ok := mustGet(t, m, key(1)); ok {
		t.Error("Get at 10 s of a 10 s TTL hit; want an expired miss")
	}
	if s := m.Stats(); s.Expired != 1 || s.Entries != 1 || s.Bytes != charge(3) {
		t.Errorf("after the expired Get: %+v; want 1 expired and freed, 1 entry left", s)
	}
	// A use does not extend the TTL; a Put does.
	mustGet(t, m, key(2))
	clk.step(9 * time.Second)
	if _, ok := mustGet(t, m, key(2)); ok {
		t.Error("Get of an entry used at 1 s and put at 0 s hit at 10 s; want the TTL counted from the Put")
	}
}

func TestMemoryPutFreesExpired(t *testing.T) {
	m, clk := newTestMemory(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 1 << 10, TTL: time.Second})
	for i := range 10 {
		mustPut(t, m, key(i), []byte("x"))
	}
	clk.step(time.Second)
	mustPut(t, m, key(100), []byte("y"))
	if s := m.Stats(); s.Expired != 10 || s.Entries != 1 || s.Evictions != 0 {
		t.Errorf("a Put after every entry expired: %+v; want the 10 freed as expired, not evicted", s)
	}
}

func TestMemoryTooLarge(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 1000})
	mustPut(t, m, key(1), make([]byte, 1000))
	if err := m.Put(bg, key(2), make([]byte, 1001)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Put(1001 bytes) with MaxEntry 1000 = %v; want ErrTooLarge", err)
	}
	if _, ok := mustGet(t, m, key(2)); ok {
		t.Error("a refused value was stored")
	}
	if s := m.Stats(); s.TooLarge != 1 || s.Puts != 1 {
		t.Errorf("Stats = %+v; want 1 too large, 1 put", s)
	}
}

// TestMemoryByteBound runs random Puts and Gets of random sizes and checks
// after each that Bytes is the sum of the entries' charges, recomputed
// here, and never over MaxBytes.
func TestMemoryByteBound(t *testing.T) {
	cfg := MemoryConfig{MaxBytes: 200 << 10, MaxEntry: 40 << 10, TTL: time.Minute}
	m, clk := newTestMemory(t, cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		k := key(rng.IntN(300))
		switch rng.IntN(10) {
		case 0:
			clk.step(time.Duration(rng.IntN(10)) * time.Second)
		case 1, 2, 3:
			mustGet(t, m, k)
		default:
			n := rng.IntN(cfg.MaxEntry + 1)
			if rng.IntN(4) == 0 {
				n = rng.IntN(64)
			}
			mustPut(t, m, k, make([]byte, n))
		}
		m.mu.Lock()
		var sum int64
		for _, e := range m.items {
			sum += charge(len(e.val))
		}
		bytes, n, lruN, ageN := m.bytes, len(m.items), m.lru.count(), m.age.count()
		m.mu.Unlock()
		if bytes != sum || bytes > cfg.MaxBytes || lruN != n || ageN != n {
			t.Fatalf("op %d: bytes %d, sum of charges %d, MaxBytes %d, entries %d, on lists %d and %d",
				i, bytes, sum, cfg.MaxBytes, n, lruN, ageN)
		}
	}
}

func (l *list) count() int {
	n := 0
	for e := l.front; e != nil; e = l.sel(e).next {
		n++
	}
	return n
}

// TestAllocSize checks that the charge of a value is what the allocator
// gives it, on both sides of the small-object limit.
func TestAllocSize(t *testing.T) {
	for n := 0; n <= 3*smallMax; n += 1 + n/64 {
		if got, want := allocSize(n), cap(newValue(n)); got != want {
			t.Fatalf("allocSize(%d) = %d; the allocator gives %d", n, got, want)
		}
	}
}

// TestEntryOverhead measures the heap per entry, with empty values, and
// holds it under EntryOverhead, at the map's fullest and emptiest loads.
func TestEntryOverhead(t *testing.T) {
	// The counts where the map has just grown, the worst measured.
	for _, n := range []int{1915, 3736, 30453} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := NewMemory(MemoryConfig{MaxBytes: 1 << 30})
		for i := range n {
			var k Key
			k[0], k[1], k[2] = byte(i), byte(i>>8), byte(i>>16)
			m.Put(bg, k, nil)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		per := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
		t.Logf("%d entries: %.0f bytes each", n, per)
		if per > EntryOverhead {
			t.Errorf("%d entries take %.0f bytes each; EntryOverhead is %d", n, per, EntryOverhead)
		}
		runtime.KeepAlive(m)
	}
}

func TestMemoryIndexRebuilt(t *testing.T) {
	m, _ := newTestMemory(t, MemoryConfig{MaxBytes: 1 << 30})
	for i := range 3 * indexRebuildMin {
		mustPut(t, m, key(i), nil)
	}
	old := m.items
	// Shrinking by replacing small entries with a few large ones evicts
	// most of the index: it must be rebuilt below half its peak.
	m.cfg.MaxBytes = 10 * charge(0)
	mustPut(t, m, key(-1), nil)
	m.mu.Lock()
	rebuilt, peak, n := !sameMap(old, m.items), m.peak, len(m.items)
	m.mu.Unlock()
	if !rebuilt || peak*3 > 4*max(n, indexRebuildMin) {
		t.Errorf("after evicting down to %d entries from %d: rebuilt %v, peak %d", n, 3*indexRebuildMin, rebuilt, peak)
	}
}

func sameMap(a, b map[Key]*entry) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

func TestMemoryConcurrent(t *testing.T) {
	m := NewMemory(MemoryConfig{MaxBytes: 64 << 10, MaxEntry: 4 << 10, TTL: time.Second})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 0))
			for range 2000 {
				k := key(rng.IntN(100))
				if rng.IntN(2) == 0 {
					v := slices.Repeat([]byte{byte(k[0])}, rng.IntN(4<<10))
					m.Put(bg, k, v)
				} else if v, ok, _ := m.Get(bg, k); ok {
					for _, b := range v {
						if b != k[0] {
							t.Errorf("Get(%x) returned a byte %d not its own", k[:4], b)
							return
						}
					}
				}
			}
		})
	}
	wg.Wait()
	s := m.Stats()
	if s.Bytes > 64<<10 || s.Hits+s.Misses+s.Puts != 16000 {
		t.Errorf("after 16000 calls: %+v", s)
	}
}

func TestMemoryConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg MemoryConfig
		ok  bool
	}{
		{MemoryConfig{}, true},
		{MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 1 << 10, TTL: time.Second, MaxConns: 1}, true},
		{MemoryConfig{MaxBytes: -1}, false},
		{MemoryConfig{TTL: -time.Second}, false},
		{MemoryConfig{MaxBytes: 1 << 20}, false}, // the default MaxEntry of 8 MiB does not fit
		{MemoryConfig{MaxBytes: charge(1000), MaxEntry: 1000}, true},
		{MemoryConfig{MaxBytes: charge(1000) - 1, MaxEntry: 1000}, false},
		{MemoryConfig{MaxBytes: 4 << 30, MaxEntry: 2 << 30}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate() = %v; want ok %v", tc.cfg, err, tc.ok)
		}
	}
}

func TestMemoryGetAllocs(t *testing.T) {
	m := NewMemory(MemoryConfig{})
	m.Put(bg, key(1), make([]byte, 100))
	k, miss := key(1), key(2)
	if n := testing.AllocsPerRun(100, func() { m.Get(bg, k); m.Get(bg, miss) }); n != 0 {
		t.Errorf("Memory.Get allocates %v times; want 0", n)
	}
}
