//go:build linux

package ratelimit

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

// Table layout: a header of one bucket's size, then the buckets.
//
//	header: magic [8]byte, version uint32, buckets uint32, hash key [32]byte, evictions uint64
//	bucket: lock uint64 (the holder's pid, 0: free), unused uint64, 7 × (key uint64, tat int64)
const (
	bucketSize  = 128
	bucketSlots = 7
	magic       = "hybridRL"
	version     = 1

	// DefaultSlots is the table's size without --rate-limit-keys: 1 MiB.
	DefaultSlots = 8192 * bucketSlots

	lockSpin  = 64               // busy tries before yielding
	lockStale = time.Millisecond // then a dead holder's lock is taken
	lockForce = 2 * time.Second  // then any holder's is (a CPU quota throttles in 100 ms periods)
)

// Table is the box's shared GCRA state; see the package doc.
type Table struct {
	mem     []byte
	buckets uint64
	key     [32]byte
	file    *os.File // the memfd: handed to workers and to an upgrade; nil once mapped from one
	pid     uint64
}

// NewTable creates a table of at least slots slots in a sealed-size memfd.
// The caller hands File() to the processes that share it.
func NewTable(slots int) (*Table, error) {
	if slots <= 0 {
		slots = DefaultSlots
	}
	buckets := (slots + bucketSlots - 1) / bucketSlots
	if buckets > 1<<24 {
		return nil, fmt.Errorf("ratelimit: %d slots: at most %d", slots, (1<<24)*bucketSlots)
	}
	fd, err := unix.MemfdCreate("hybrid-ratelimit", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "hybrid-ratelimit")
	size := (buckets + 1) * bucketSize
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("ratelimit: ftruncate: %w", err)
	}
	// No process that maps it may change its size under the others.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("ratelimit: seal: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ratelimit: mmap: %w", err)
	}
	copy(mem, magic)
	binary.LittleEndian.PutUint32(mem[8:], version)
	binary.LittleEndian.PutUint32(mem[12:], uint32(buckets))
	if _, err := rand.Read(mem[16:48]); err != nil {
		return nil, err
	}
	t := &Table{mem: mem, file: f}
	t.init()
	return t, nil
}

// OpenTable maps the table another process made, from its descriptor. f
// may be closed afterwards.
func OpenTable(f *os.File) (*Table, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("ratelimit: table on fd %d: %w", f.Fd(), err)
	}
	if st.Size < 2*bucketSize || st.Size%bucketSize != 0 {
		return nil, fmt.Errorf("ratelimit: table on fd %d: %d bytes is no table", f.Fd(), st.Size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("ratelimit: mmap: %w", err)
	}
	if string(mem[:8]) != magic || binary.LittleEndian.Uint32(mem[8:]) != version ||
		int64(binary.LittleEndian.Uint32(mem[12:])+1)*bucketSize != st.Size {
		unix.Munmap(mem)
		return nil, errors.New("ratelimit: the shared table has another layout (version): restart, not upgrade")
	}
	t := &Table{mem: mem}
	t.init()
	return t, nil
}

func (t *Table) init() {
	t.buckets = uint64(binary.LittleEndian.Uint32(t.mem[12:]))
	copy(t.key[:], t.mem[16:48])
	t.pid = uint64(os.Getpid())
}

// File is the table's descriptor in the process that made it, for
// ExtraFiles; nil in one that opened it.
func (t *Table) File() *os.File { return t.file }

// Slots is how many clients the table holds.
func (t *Table) Slots() int { return int(t.buckets) * bucketSlots }

// Evictions counts the clients forgotten to make room while their state
// still restricted them, across every process of the box.
func (t *Table) Evictions() uint64 { return t.word(48).Load() }

func (t *Table) word(off uint64) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&t.mem[off]))
}

// Allow decides one request of the client named id under rule r.
func (t *Table) Allow(id string, r Rule) Decision {
	if r.Off() {
		return Decision{Allowed: true}
	}
	return t.allowAt(id, r, monoNow())
}

func (t *Table) allowAt(id string, r Rule, now int64) Decision {
	k := t.hash(id)
	b := bucketSize * (1 + k%t.buckets)
	interval, tolerance := r.ns()
	t.lock(b)
	s := t.slot(b, k, now)
	tat := int64(t.word(s + 8).Load())
	tat, ok := gcra(tat, now, interval, tolerance)
	t.word(s + 8).Store(uint64(tat))
	t.unlock(b)
	return decision(ok, tat, now, interval, tolerance)
}

// hash is the client's slot key: never 0, which marks a free slot.
func (t *Table) hash(id string) uint64 {
	// BLAKE3 of the table's secret then the id: a PRF, as BLAKE3 has no
	// length extension. On the stack for ids that fit (an IP, a key name).
	var buf [32 + 96]byte
	msg := append(append(buf[:0], t.key[:]...), id...)
	sum := blake3.Sum256(msg)
	k := binary.LittleEndian.Uint64(sum[:8])
	if k == 0 {
		k = 1
	}
	return k
}

// slot returns the offset of k's slot in bucket b, taking one for it if it
// has none (see the package doc for which). The bucket's lock is held.
func (t *Table) slot(b, k uint64, now int64) uint64 {
	first := b + 16
	var free, expired, oldest uint64
	oldestTAT := int64(1<<63 - 1)
	for i := range uint64(bucketSlots) {
		s := first + 16*i
		switch sk := t.word(s).Load(); {
		case sk == k:
			return s
		case sk == 0:
			if free == 0 {
				free = s
			}
		default:
			tat := int64(t.word(s + 8).Load())
			if tat <= now && expired == 0 {
				expired = s
			}
			if tat < oldestTAT {
				oldest, oldestTAT = s, tat
			}
		}
	}
	s := free
	if s == 0 {
		s = expired
	}
	if s == 0 {
		s = oldest
		t.word(48).Add(1)
	}
	t.word(s).Store(k)
	t.word(s + 8).Store(0)
	return s
}

// lock takes bucket b's lock; see the package doc for a holder that died.
func (t *Table) lock(b uint64) {
	w := t.word(b)
	if w.CompareAndSwap(0, t.pid) {
		return
	}
	var since time.Time
	for i := 1; ; i++ {
		if i < lockSpin {
			if w.Load() == 0 && w.CompareAndSwap(0, t.pid) {
				return
			}
			continue
		}
		runtime.Gosched()
		holder := w.Load()
		if holder == 0 {
			if w.CompareAndSwap(0, t.pid) {
				return
			}
			continue
		}
		if i%64 != 0 {
			continue
		}
		if since.IsZero() {
			since = time.Now()
			continue
		}
		waited := time.Since(since)
		if waited > lockForce || (waited > lockStale && !alive(holder)) {
			if w.CompareAndSwap(holder, t.pid) {
				return
			}
		}
	}
}

func (t *Table) unlock(b uint64) { t.word(b).Store(0) }

// alive reports whether pid names a live process (or one we may not
// signal, which is alive as far as we know).
func alive(pid uint64) bool {
	if pid > 1<<22 {
		return false
	}
	err := unix.Kill(int(pid), 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// Close unmaps the table (and closes its memfd in the process that made
// it). No Allow may run after.
func (t *Table) Close() error {
	if t.file != nil {
		t.file.Close()
	}
	return unix.Munmap(t.mem)
}

// monoNow is CLOCK_MONOTONIC in nanoseconds, the one clock every process
// of the box shares, read through Go's own monotonic clock (no system
// call): an offset measured once at start, plus the time since.
func monoNow() int64 {
	c := monoClock()
	return c.base + int64(time.Since(c.start))
}

var monoClock = sync.OnceValue(func() struct {
	start time.Time
	base  int64
} {
	var ts unix.Timespec
	start := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("ratelimit: clock_gettime(CLOCK_MONOTONIC): " + err.Error())
	}
	return struct {
		start time.Time
		base  int64
	}{start, ts.Nano()}
})
