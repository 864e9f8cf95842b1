package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of [MemoryConfig], [ClientConfig] and [RedisConfig].
const (
	// DefaultMaxBytes bounds a Memory: 256 MiB, about 13,000 results of
	// 20 KB, held once per box.
	DefaultMaxBytes = 256 << 20
	// DefaultMaxEntry is the largest value kept: 8 MiB, above the largest
	// result hybrid's workloads return for their largest inputs.
	DefaultMaxEntry = 8 << 20
	// DefaultTTL is how long a result is kept at most: results are
	// content-addressed and never go stale, so the TTL only bounds how long
	// a result outlives the code that made it (see doc.go, Versions).
	DefaultTTL = time.Hour
	// DefaultMaxConns bounds the connections [Memory.Serve] holds open: far
	// above what the box's workers keep (workers × ClientConfig.Conns,
	// plus a burst), and a bound on the per-connection memory.
	DefaultMaxConns = 1024
	// DefaultTimeout bounds each Client and Redis call: a cache that takes
	// longer than this to answer costs more than the work it saves for
	// most results, and a caller treats the timeout as a miss.
	DefaultTimeout = 100 * time.Millisecond
	// DefaultConns is the idle connections a Client keeps to its server.
	DefaultConns = 8
)

// EntryOverhead is what the byte bound charges each entry on top of its
// value's allocation: the entry's record (key, slice header, timestamp,
// charge, two list links: 112 bytes from the allocator) and its share of
// the index map (a 40-byte slot and its control byte, at loads from 7/16
// right after the map grew to 7/8: 46 to 94 bytes), rounded up. Measured
// from 500 to 140,000 entries: 195 to 217 bytes per entry;
// TestEntryOverhead holds it under this.
const EntryOverhead = 256

// sweepMax bounds the expired entries one Put frees before it stores its
// own, so that a mass expiry costs a bounded pause per call instead of one
// long one (each Put frees up to 16 and adds 1, so the backlog drains).
const sweepMax = 16

// indexRebuildMin is the high-water mark of entries below which the index
// map is never rebuilt (see Memory.rebuildLocked): such an index holds at
// most about 110 KiB.
const indexRebuildMin = 1024

// MemoryConfig bounds a [Memory]. Zero fields take the defaults.
type MemoryConfig struct {
	// MaxBytes bounds what the entries hold: their values' allocations
	// plus EntryOverhead each, and the values being received over the
	// socket. Default: DefaultMaxBytes.
	MaxBytes int64
	// MaxEntry is the largest value kept, in bytes; a larger one is refused
	// with ErrTooLarge. Default: DefaultMaxEntry.
	MaxEntry int
	// TTL is how long an entry is kept after its Put; an older entry is a
	// miss and is freed. Default: DefaultTTL.
	TTL time.Duration
	// MaxConns bounds the connections Serve holds open at once; one more is
	// closed at once (counted in Stats.Refused). Default: DefaultMaxConns.
	MaxConns int
}

func (c MemoryConfig) withDefaults() MemoryConfig {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxEntry == 0 {
		c.MaxEntry = DefaultMaxEntry
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	return c
}

// Validate reports a field out of range (zero fields are the defaults),
// or a MaxEntry that MaxBytes could not hold even alone.
func (c MemoryConfig) Validate() error {
	if c.MaxBytes < 0 || c.MaxEntry < 0 || c.TTL < 0 || c.MaxConns < 0 {
		return fmt.Errorf("cache: max bytes %d, max entry %d, TTL %v, max conns %d: want each > 0 (or 0 for the default)",
			c.MaxBytes, c.MaxEntry, c.TTL, c.MaxConns)
	}
	c = c.withDefaults()
	if c.MaxEntry > maxFrameValue {
		return fmt.Errorf("cache: max entry %d: want at most %d (the protocol's bound)", c.MaxEntry, maxFrameValue)
	}
	if charge(c.MaxEntry) > c.MaxBytes {
		return fmt.Errorf("cache: max bytes %d cannot hold one entry of max entry %d (%d bytes with its overhead)",
			c.MaxBytes, c.MaxEntry, charge(c.MaxEntry))
	}
	return nil
}

// Stats are a store's counters since it was made. Each store fills the
// fields that apply to it.
type Stats struct {
	Hits   uint64 // Get found the key
	Misses uint64 // Get did not (expired entries included)
	Puts   uint64 // values stored
	// Evictions are entries freed, least recently used first, to make room
	// under MaxBytes.
	Evictions uint64
	// Expired are entries freed because they were older than the TTL.
	Expired uint64
	// TooLarge are Puts refused with ErrTooLarge.
	TooLarge uint64
	// Errors: for a Client or Redis, calls that failed (each was a miss
	// or a lost Put to its caller); for a Memory, frames it refused or
	// that were cut off (a malformed frame, a length over MaxEntry, a
	// connection that ended mid-frame) and Puts with no room (ErrFull).
	Errors uint64
	// Refused are connections Serve closed unread: a peer of another uid,
	// or one past MaxConns (Memory only).
	Refused uint64
	// Bytes is what MaxBytes bounds now: the entries' charges and the
	// values being received (Memory only).
	Bytes int64
	// Entries is the number of entries held (Memory only).
	Entries int64
}

// Memory is a bounded LRU of results with a TTL, safe for concurrent use.
// It holds at most MaxBytes (see [MemoryConfig.MaxBytes]); an entry older
// than the TTL is a miss and is freed. The primary serves one to its
// workers with [Memory.Serve]; a process may also use it directly.
//
// Lifetimes: Get returns the stored bytes themselves, never a copy. They
// are never written again (a Put stores a copy of its value, and a later
// Put of the key replaces the slice rather than writing into it), so they
// stay valid after the entry is evicted; the caller must not modify them.
type Memory struct {
	cfg   MemoryConfig
	clock func() time.Duration // monotonic; tests step it
	start time.Time

	mu       sync.Mutex
	items    map[Key]*entry
	peak     int    // the most entries since the index was last rebuilt
	lru      list   // front: most recently used
	age      list   // front: oldest Put
	bytes    int64  // charged by the entries
	reserved int64  // charged by values being received
	st       Stats  // counters under mu; Bytes, Entries filled by Stats()
	srv      srvCnt // Serve's counters
}

type srvCnt struct{ errors, refused atomic.Uint64 }

// entry is one stored result. It is on both lists: lru (by use) and age
// (by Put), so the oldest entry is found at once whatever its use.
type entry struct {
	key    Key
	val    []byte
	at     time.Duration // clock at Put
	charge int64
	lru    links
	age    links
}

type links struct{ prev, next *entry }

// list is an intrusive doubly linked list over one of an entry's links.
type list struct {
	front, back *entry
	sel         func(*entry) *links
}

func (l *list) pushBack(e *entry) {
	n := l.sel(e)
	n.prev, n.next = l.back, nil
	if l.back != nil {
		l.sel(l.back).next = e
	} else {
		l.front = e
	}
	l.back = e
}

func (l *list) pushFront(e *entry) {
	n := l.sel(e)
	n.prev, n.next = nil, l.front
	if l.front != nil {
		l.sel(l.front).prev = e
	} else {
		l.back = e
	}
	l.front = e
}

func (l *list) remove(e *entry) {
	n := l.sel(e)
	if n.prev != nil {
		l.sel(n.prev).next = n.next
	} else {
		l.front = n.next
	}
	if n.next != nil {
		l.sel(n.next).prev = n.prev
	} else {
		l.back = n.prev
	}
	n.prev, n.next = nil, nil
}

// charge is what the byte bound counts for a value of n bytes.
func charge(n int) int64 { return int64(allocSize(n)) + EntryOverhead }

// NewMemory returns an empty Memory bounded by cfg. It panics if
// cfg.Validate fails: validate a configuration where it is read.
func NewMemory(cfg MemoryConfig) *Memory {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	m := &Memory{cfg: cfg.withDefaults(), start: time.Now(), items: make(map[Key]*entry)}
	m.clock = func() time.Duration { return time.Since(m.start) }
	m.lru.sel = func(e *entry) *links { return &e.lru }
	m.age.sel = func(e *entry) *links { return &e.age }
	return m
}

// Config returns the configuration in force, defaults filled in.
func (m *Memory) Config() MemoryConfig { return m.cfg }

// Get returns the value stored under k, or ok false. An expired entry is a
// miss and is freed. The error is always nil. The bytes returned are the
// stored ones and must not be modified (see [Memory]).
func (m *Memory) Get(_ context.Context, k Key) (v []byte, ok bool, err error) {
	now := m.clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.items[k]
	if e == nil {
		m.st.Misses++
		return nil, false, nil
	}
	if now-e.at >= m.cfg.TTL {
		m.removeLocked(e)
		m.st.Expired++
		m.st.Misses++
		return nil, false, nil
	}
	if m.lru.front != e {
		m.lru.remove(e)
		m.lru.pushFront(e)
	}
	m.st.Hits++
	return e.val, true, nil
}

// Put stores a copy of v under k, replacing what k held, and evicts the
// least recently used entries as needed to stay within MaxBytes. A value
// over MaxEntry is refused with ErrTooLarge; ErrFull when values being
// received hold so much of the bound that no eviction makes room.
func (m *Memory) Put(_ context.Context, k Key, v []byte) error {
	if len(v) > m.cfg.MaxEntry {
		m.mu.Lock()
		m.st.TooLarge++
		m.mu.Unlock()
		return ErrTooLarge
	}
	val := newValue(len(v))
	copy(val, v)
	need := charge(len(v))
	now := m.clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.items[k]; old != nil {
		m.removeLocked(old)
	}
	if !m.makeRoomLocked(need, now) {
		m.st.Errors++
		return ErrFull
	}
	m.insertLocked(k, val, need, now)
	return nil
}

// reserve charges need bytes for a value about to be received, evicting
// as Put does; false when there is no room. The caller ends it with
// commit or release.
func (m *Memory) reserve(need int64) bool {
	now := m.clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.makeRoomLocked(need, now) {
		m.st.Errors++
		return false
	}
	m.reserved += need
	return true
}

func (m *Memory) release(need int64) {
	m.mu.Lock()
	m.reserved -= need
	m.mu.Unlock()
}

// commit stores val, received into a buffer of its own under a
// reservation of need, without a copy.
func (m *Memory) commit(k Key, val []byte, need int64) {
	now := m.clock()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reserved -= need
	if old := m.items[k]; old != nil {
		m.removeLocked(old)
	}
	m.insertLocked(k, val, need, now)
}

// makeRoomLocked frees expired entries (up to sweepMax), then the least
// recently used ones, until need more bytes fit under MaxBytes.
func (m *Memory) makeRoomLocked(need int64, now time.Duration) bool {
	for i := 0; i < sweepMax && m.age.front != nil && now-m.age.front.at >= m.cfg.TTL; i++ {
		m.removeLocked(m.age.front)
		m.st.Expired++
	}
	for m.bytes+m.reserved+need > m.cfg.MaxBytes && m.lru.back != nil {
		m.removeLocked(m.lru.back)
		m.st.Evictions++
	}
	return m.bytes+m.reserved+need <= m.cfg.MaxBytes
}

func (m *Memory) insertLocked(k Key, val []byte, need int64, now time.Duration) {
	e := &entry{key: k, val: val, at: now, charge: need}
	m.items[k] = e
	m.peak = max(m.peak, len(m.items))
	m.lru.pushFront(e)
	m.age.pushBack(e)
	m.bytes += need
	m.st.Puts++
}

func (m *Memory) removeLocked(e *entry) {
	delete(m.items, e.key)
	m.lru.remove(e)
	m.age.remove(e)
	m.bytes -= e.charge
	m.rebuildLocked()
}

// rebuildLocked copies the index into a new map once it holds fewer than
// 3/4 of the entries it has held since it was made. A Go map never gives
// back the slots it grew to, and after a spell of many small entries the
// empty slots would be memory outside the byte bound; EntryOverhead covers
// a map sized for up to 4/3 of its entries (112 + 4/3 × 94 < 256). The copy
// costs O(entries), paid once for at least a third as many removals, and
// is done under the lock: a pause of about 50 ns per entry kept.
func (m *Memory) rebuildLocked() {
	if m.peak < indexRebuildMin || len(m.items) >= m.peak*3/4 {
		return
	}
	items := make(map[Key]*entry, len(m.items))
	for k, e := range m.items {
		items[k] = e
	}
	m.items, m.peak = items, len(items)
}

// Stats returns the counters, and the bytes and entries held now.
func (m *Memory) Stats() Stats {
	m.mu.Lock()
	s := m.st
	s.Bytes = m.bytes + m.reserved
	s.Entries = int64(len(m.items))
	m.mu.Unlock()
	s.Errors += m.srv.errors.Load()
	s.Refused = m.srv.refused.Load()
	return s
}

var _ Store = (*Memory)(nil)

// Store is a result cache: the box's [Memory], a worker's [Client] of it,
// [Redis], or [Tiered] over two of them. Get's ok is false on a miss; an
// error is also a miss to the caller, who counts it and computes the
// result. Put stores a value for later Gets; it may refuse (ErrTooLarge)
// or fail, and the caller goes on either way. Safe for concurrent use.
type Store interface {
	Get(ctx context.Context, k Key) (v []byte, ok bool, err error)
	Put(ctx context.Context, k Key, v []byte) error
}

// isTooLarge is errors.Is(err, ErrTooLarge), for the tiers' counters.
func isTooLarge(err error) bool { return errors.Is(err, ErrTooLarge) }
