package cache

import (
	"context"
	"errors"
	"sync/atomic"
)

// The tiers GetFrom names.
const (
	TierLocal  = "local"
	TierRemote = "remote"
)

// Tiered is a [Store] over two: the box's (local: a [Client], or a
// [Memory] in the primary) and the hosts' (remote: [Redis]). Get asks
// local first and remote on a local miss; a remote hit is then put into
// local, so the box's next request for it stays on the box. Put writes
// local, then remote. Either tier may be nil. Safe for concurrent use.
//
// An error from one tier never hides a hit in the other: Get returns the
// hit and no error, and counts the error in that tier's stats. Put goes on
// to the second tier whatever the first said, and returns both errors
// (errors.Join). A caller that does not want the request to wait for
// Redis's Put runs Put in a goroutine of its own, with a context of its
// own.
type Tiered struct {
	local, remote Store
	l, r          tierCnt
	fills         atomic.Uint64
}

type tierCnt struct{ hits, misses, errors, puts atomic.Uint64 }

// TierStats are one tier's counters as Tiered saw them.
type TierStats struct {
	Hits, Misses, Errors, Puts uint64
}

// TieredStats are a Tiered's counters per tier, and Fills: remote hits put
// into the local tier.
type TieredStats struct {
	Local, Remote TierStats
	Fills         uint64
}

// NewTiered returns a Tiered over local and remote, either of which may
// be nil.
func NewTiered(local, remote Store) *Tiered {
	return &Tiered{local: nilIfNil(local), remote: nilIfNil(remote)}
}

// nilIfNil turns a nil pointer in an interface (a *Client that was never
// made) into a nil Store.
func nilIfNil(s Store) Store {
	switch p := s.(type) {
	case *Memory:
		if p == nil {
			return nil
		}
	case *Client:
		if p == nil {
			return nil
		}
	case *Redis:
		if p == nil {
			return nil
		}
	case *Tiered:
		if p == nil {
			return nil
		}
	}
	return s
}

// Get is GetFrom without the tier's name.
func (t *Tiered) Get(ctx context.Context, k Key) (v []byte, ok bool, err error) {
	v, tier, err := t.GetFrom(ctx, k)
	return v, tier != "", err
}

// GetFrom returns k's value and the tier that answered: TierLocal,
// TierRemote, or "" on a miss. err is nil on a hit; on a miss it joins the
// tiers' errors, nil if both simply missed.
func (t *Tiered) GetFrom(ctx context.Context, k Key) (v []byte, tier string, err error) {
	var lerr, rerr error
	if t.local != nil {
		v, ok, err := t.local.Get(ctx, k)
		switch {
		case err != nil:
			t.l.errors.Add(1)
			lerr = err
		case ok:
			t.l.hits.Add(1)
			return v, TierLocal, nil
		default:
			t.l.misses.Add(1)
		}
	}
	if t.remote != nil {
		v, ok, err := t.remote.Get(ctx, k)
		switch {
		case err != nil:
			t.r.errors.Add(1)
			rerr = err
		case ok:
			t.r.hits.Add(1)
			t.fill(ctx, k, v)
			return v, TierRemote, nil
		default:
			t.r.misses.Add(1)
		}
	}
	return nil, "", errors.Join(lerr, rerr)
}

// fill puts a remote hit into the local tier. A value the local tier
// refuses as too large is not an error: the tiers' bounds may differ.
func (t *Tiered) fill(ctx context.Context, k Key, v []byte) {
	if t.local == nil {
		return
	}
	switch err := t.local.Put(ctx, k, v); {
	case err == nil:
		t.fills.Add(1)
	case !isTooLarge(err):
		t.l.errors.Add(1)
	}
}

// Put writes v to the local tier, then the remote one.
func (t *Tiered) Put(ctx context.Context, k Key, v []byte) error {
	var lerr, rerr error
	if t.local != nil {
		lerr = t.put(ctx, t.local, &t.l, k, v)
	}
	if t.remote != nil {
		rerr = t.put(ctx, t.remote, &t.r, k, v)
	}
	return errors.Join(lerr, rerr)
}

func (t *Tiered) put(ctx context.Context, s Store, c *tierCnt, k Key, v []byte) error {
	err := s.Put(ctx, k, v)
	switch {
	case err == nil:
		c.puts.Add(1)
	case !isTooLarge(err):
		c.errors.Add(1)
	}
	return err
}

// Stats returns the counters per tier.
func (t *Tiered) Stats() TieredStats {
	get := func(c *tierCnt) TierStats {
		return TierStats{Hits: c.hits.Load(), Misses: c.misses.Load(), Errors: c.errors.Load(), Puts: c.puts.Load()}
	}
	return TieredStats{Local: get(&t.l), Remote: get(&t.r), Fills: t.fills.Load()}
}

var _ Store = (*Tiered)(nil)
