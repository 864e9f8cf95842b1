package cache

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/redistest"
)

// fakeStore is a map with an error to return, for the tiers' tests.
type fakeStore struct {
	mu   sync.Mutex
	m    map[Key][]byte
	err  error // returned by every call while set
	gets int
	puts int
}

func newFake() *fakeStore { return &fakeStore{m: map[Key][]byte{}} }

func (f *fakeStore) Get(_ context.Context, k Key) ([]byte, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	if f.err != nil {
		return nil, false, f.err
	}
	v, ok := f.m[k]
	return v, ok, nil
}

func (f *fakeStore) Put(_ context.Context, k Key, v []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts++
	if f.err != nil {
		return f.err
	}
	f.m[k] = v
	return nil
}

var errDown = errors.New("down")

func TestTieredLocalFirst(t *testing.T) {
	local, remote := newFake(), newFake()
	tr := NewTiered(local, remote)
	local.m[key(1)] = []byte("local")
	remote.m[key(1)] = []byte("remote")
	v, tier, err := tr.GetFrom(bg, key(1))
	if string(v) != "local" || tier != TierLocal || err != nil || remote.gets != 0 {
		t.Errorf("GetFrom with both holding the key = %q, %q, %v, %d remote gets; want the local value, remote not asked",
			v, tier, err, remote.gets)
	}
}

func TestTieredRemoteHitFillsLocal(t *testing.T) {
	local, remote := newFake(), newFake()
	tr := NewTiered(local, remote)
	remote.m[key(1)] = []byte("remote")
	if v, tier, err := tr.GetFrom(bg, key(1)); string(v) != "remote" || tier != TierRemote || err != nil {
		t.Fatalf("GetFrom = %q, %q, %v; want the remote value", v, tier, err)
	}
	if string(local.m[key(1)]) != "remote" {
		t.Fatal("a remote hit was not put into the local tier")
	}
	if _, tier, _ := tr.GetFrom(bg, key(1)); tier != TierLocal || remote.gets != 1 {
		t.Errorf("second GetFrom answered by %q after %d remote gets; want local, 1", tier, remote.gets)
	}
	want := TieredStats{Local: TierStats{Hits: 1, Misses: 1}, Remote: TierStats{Hits: 1}, Fills: 1}
	if got := tr.Stats(); got != want {
		t.Errorf("Stats = %+v; want %+v", got, want)
	}
}

func TestTieredErrorDoesNotHideHit(t *testing.T) {
	local, remote := newFake(), newFake()
	tr := NewTiered(local, remote)
	local.err = errDown
	remote.m[key(1)] = []byte("remote")
	if v, tier, err := tr.GetFrom(bg, key(1)); string(v) != "remote" || tier != TierRemote || err != nil {
		t.Errorf("GetFrom with local down = %q, %q, %v; want the remote hit and no error", v, tier, err)
	}
	local.err, remote.err = nil, errDown
	local.m[key(2)] = []byte("local")
	if v, tier, err := tr.GetFrom(bg, key(2)); string(v) != "local" || tier != TierLocal || err != nil {
		t.Errorf("GetFrom with remote down = %q, %q, %v; want the local hit", v, tier, err)
	}
	// Both missing, one down: a miss that carries the error.
	if v, tier, err := tr.GetFrom(bg, key(3)); v != nil || tier != "" || !errors.Is(err, errDown) {
		t.Errorf("GetFrom of a missing key with remote down = %q, %q, %v; want a miss with the error", v, tier, err)
	}
	local.err = errDown
	if _, ok, err := tr.Get(bg, key(3)); ok || !errors.Is(err, errDown) {
		t.Errorf("Get with both down = %v, %v", ok, err)
	}
	st := tr.Stats()
	// Local: the first Get, its failed fill, the last Get; remote: the
	// second and third Gets.
	if st.Local.Errors != 3 || st.Remote.Errors != 2 || st.Fills != 0 {
		t.Errorf("Stats = %+v; want 3 local errors (a failed fill included) and 2 remote", st)
	}
}

func TestTieredPutWritesBoth(t *testing.T) {
	local, remote := newFake(), newFake()
	tr := NewTiered(local, remote)
	mustPut(t, tr, key(1), []byte("v"))
	if local.m[key(1)] == nil || remote.m[key(1)] == nil {
		t.Fatal("Put did not write both tiers")
	}
	local.err = errDown
	if err := tr.Put(bg, key(2), []byte("w")); !errors.Is(err, errDown) || remote.m[key(2)] == nil {
		t.Errorf("Put with local down = %v, remote holds %q; want the error, and remote written", err, remote.m[key(2)])
	}
}

func TestTieredNilTiers(t *testing.T) {
	var nilClient *Client
	for _, tr := range []*Tiered{NewTiered(nil, nil), NewTiered(nilClient, nil)} {
		if _, tier, err := tr.GetFrom(bg, key(1)); tier != "" || err != nil {
			t.Errorf("GetFrom with no tiers = %q, %v; want a miss", tier, err)
		}
		if err := tr.Put(bg, key(1), []byte("v")); err != nil {
			t.Errorf("Put with no tiers = %v", err)
		}
	}
	remote := newFake()
	remote.m[key(1)] = []byte("r")
	if v, tier, _ := NewTiered(nil, remote).GetFrom(bg, key(1)); string(v) != "r" || tier != TierRemote {
		t.Errorf("GetFrom with remote only = %q, %q", v, tier)
	}
}

// TestTieredTooLargeForLocal: a remote value the local tier's MaxEntry
// refuses is served, not filled, and not counted as an error.
func TestTieredTooLargeForLocal(t *testing.T) {
	local := NewMemory(MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 10})
	remote := newFake()
	remote.m[key(1)] = make([]byte, 100)
	tr := NewTiered(local, remote)
	if v, tier, err := tr.GetFrom(bg, key(1)); len(v) != 100 || tier != TierRemote || err != nil {
		t.Errorf("GetFrom = %d bytes, %q, %v", len(v), tier, err)
	}
	if st := tr.Stats(); st.Local.Errors != 0 || st.Fills != 0 {
		t.Errorf("Stats = %+v; want no fill and no error", st)
	}
}

// TestTieredOverSocketAndRedis runs the stack hybrid runs: a worker's
// Client of the box's Memory, then Redis. A result put by one box is
// found by another box through Redis and then stays on that box.
func TestTieredOverSocketAndRedis(t *testing.T) {
	rs := redistest.Start(t)
	box := func() *Tiered {
		s := startServer(t, MemoryConfig{MaxBytes: 1 << 20, MaxEntry: 64 << 10})
		c := newTestClient(t, s.path, ClientConfig{MaxEntry: 64 << 10})
		r := NewRedis(newRedisClient(t, rs.URL(), nil), RedisConfig{MaxEntry: 64 << 10, Timeout: time.Second})
		return NewTiered(c, r)
	}
	a, b := box(), box()
	mustPut(t, a, key(1), []byte("result"))
	for _, want := range []string{TierRemote, TierLocal} {
		if v, tier, err := b.GetFrom(bg, key(1)); string(v) != "result" || tier != want || err != nil {
			t.Errorf("box b GetFrom = %q, %q, %v; want the result from %s", v, tier, err, want)
		}
	}
}
