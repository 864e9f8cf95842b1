package metrics

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/hybrid-server/hybrid/internal/promtext"
)

// Cluster is the primary's view of its workers' metrics: the latest
// snapshot of every live worker, and the sums of the last snapshots of the
// workers that exited. It is a procpool.MetricsSink. Safe for concurrent
// use.
type Cluster struct {
	mu      sync.Mutex
	live    map[int]worker // by pid
	retired map[string]*acc
	carried map[string]*acc // the previous primaries' totals (Carry)
}

type worker struct {
	slot int
	snap *Snapshot
	size int // of the snapshot's encoding, in bytes
}

// acc is one summed series.
type acc struct {
	name   string
	labels []string
	value  float64
	counts []uint64
}

func (a *acc) add(s *Series, useMax bool) {
	if useMax {
		a.value = max(a.value, s.Value)
	} else {
		a.value += s.Value
	}
	if len(a.counts) < len(s.Counts) {
		a.counts = append(a.counts, make([]uint64, len(s.Counts)-len(a.counts))...)
	}
	for i, n := range s.Counts {
		a.counts[i] += n
	}
}

func key(name string, labels []string) string {
	return name + "\xff" + strings.Join(labels, "\xff")
}

// snapshotBytes is the primary's gauge of each worker's snapshot size.
const snapshotBytes = "hybrid_worker_metrics_snapshot_bytes"

// Beat records payload, the worker's latest snapshot. A payload that does
// not decode, or of another version, is ignored: the worker's previous one
// stands.
func (c *Cluster) Beat(slot, pid int, payload []byte) {
	if len(payload) == 0 {
		return
	}
	snap := new(Snapshot)
	if json.Unmarshal(payload, snap) != nil || snap.V != SnapshotVersion {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == nil {
		c.live = map[int]worker{}
	}
	c.live[pid] = worker{slot: slot, snap: snap, size: len(payload)}
}

// Exit folds the last snapshot of the worker pid into the retired sums:
// its counters and histograms stay in the cluster's, its gauges go.
func (c *Cluster) Exit(slot, pid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.live[pid]
	if !ok {
		return
	}
	delete(c.live, pid)
	if c.retired == nil {
		c.retired = map[string]*acc{}
	}
	c.sumCounters(c.retired, w.snap)
}

// Carry takes totals, the previous primary's counters and histograms
// (from [Cluster.Totals]), as the base this cluster's counts add to. It
// may be called again with later totals of the same primary (a
// provisional, then a final one): each series then keeps the larger of
// the two, count by count, so that nothing goes backwards.
func (c *Cluster) Carry(totals []Series) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.carried == nil {
		c.carried = map[string]*acc{}
	}
	for i := range totals {
		s := &totals[i]
		d, ok := catalog[s.Name]
		if !ok || d.typ == promtext.Gauge {
			continue
		}
		k := key(s.Name, s.Labels)
		a := c.carried[k]
		if a == nil {
			a = &acc{name: s.Name, labels: s.Labels}
			c.carried[k] = a
		}
		a.value = max(a.value, s.Value)
		if len(a.counts) < len(s.Counts) {
			a.counts = append(a.counts, make([]uint64, len(s.Counts)-len(a.counts))...)
		}
		for i, n := range s.Counts {
			a.counts[i] = max(a.counts[i], n)
		}
	}
}

// CarryOut is [Cluster.Totals] encoded for the next primary's
// [Cluster.CarryIn]: a [Snapshot] of [SnapshotVersion].
func (c *Cluster) CarryOut() []byte {
	b, err := json.Marshal(Snapshot{V: SnapshotVersion, Series: c.Totals()})
	if err != nil {
		return nil
	}
	return b
}

// CarryIn decodes payload, the previous primary's [Cluster.CarryOut], and
// carries it ([Cluster.Carry]). A payload that does not decode, or of
// another version, is refused: the cluster counts on without it.
func (c *Cluster) CarryIn(payload []byte) error {
	var snap Snapshot
	if err := json.Unmarshal(payload, &snap); err != nil {
		return fmt.Errorf("metrics: carried totals: %w", err)
	}
	if snap.V != SnapshotVersion {
		return fmt.Errorf("metrics: carried totals of version %d; this binary reads %d", snap.V, SnapshotVersion)
	}
	c.Carry(snap.Series)
	return nil
}

func (c *Cluster) sumCounters(into map[string]*acc, snap *Snapshot) {
	for i := range snap.Series {
		s := &snap.Series[i]
		d, ok := catalog[s.Name]
		if !ok || d.typ == promtext.Gauge {
			continue
		}
		k := key(s.Name, s.Labels)
		a := into[k]
		if a == nil {
			a = &acc{name: s.Name, labels: s.Labels}
			into[k] = a
		}
		a.add(s, false)
	}
}

// Totals returns the cluster's counters and histograms, summed over live
// and exited workers and what was carried: what a primary that takes over
// carries on from.
func (c *Cluster) Totals() []Series {
	c.mu.Lock()
	defer c.mu.Unlock()
	sums := c.counterSums()
	out := make([]Series, 0, len(sums))
	for _, a := range sums {
		out = append(out, Series{Name: a.name, Labels: a.labels, Value: a.value, Counts: a.counts})
	}
	return out
}

// counterSums is carried plus retired plus every live worker's counters.
// c.mu held.
func (c *Cluster) counterSums() map[string]*acc {
	sums := make(map[string]*acc, len(c.carried)+len(c.retired)+16)
	for _, m := range []map[string]*acc{c.carried, c.retired} {
		for k, a := range m {
			if b := sums[k]; b != nil {
				b.add(&Series{Value: a.value, Counts: a.counts}, false)
				continue
			}
			sums[k] = &acc{name: a.name, labels: a.labels, value: a.value, counts: append([]uint64(nil), a.counts...)}
		}
	}
	for _, w := range c.live {
		c.sumCounters(sums, w.snap)
	}
	return sums
}

// Families returns the workers' metric families: counters and histograms
// summed over the cluster, gauges per worker slot (label worker; the two
// workers of a slot during a reload combined).
func (c *Cluster) Families() []promtext.Family {
	c.mu.Lock()
	sums := c.counterSums()
	gauges := map[string]*acc{}
	for _, w := range c.live {
		slot := strconv.Itoa(w.slot)
		k := key(snapshotBytes, []string{"worker", slot})
		if a := gauges[k]; a == nil {
			gauges[k] = &acc{name: snapshotBytes, labels: []string{"worker", slot}, value: float64(w.size)}
		} else {
			a.value = max(a.value, float64(w.size))
		}
		for i := range w.snap.Series {
			s := &w.snap.Series[i]
			d, ok := catalog[s.Name]
			if !ok || d.typ != promtext.Gauge {
				continue
			}
			labels := append(s.Labels[:len(s.Labels):len(s.Labels)], "worker", slot)
			k := key(s.Name, labels)
			a := gauges[k]
			if a == nil {
				a = &acc{name: s.Name, labels: labels}
				gauges[k] = a
			}
			a.add(s, d.max)
		}
	}
	c.mu.Unlock()

	byName := map[string]*promtext.Family{}
	for _, m := range []map[string]*acc{sums, gauges} {
		for _, a := range m {
			f := byName[a.name]
			if f == nil {
				d := catalog[a.name]
				if a.name == snapshotBytes {
					d = desc{help: "Bytes of the worker's last metrics snapshot, as its heartbeat carried it (at most 48 KiB; a worker whose snapshot is larger says so in a WARN).", typ: promtext.Gauge}
				}
				f = &promtext.Family{Name: a.name, Help: d.help, Type: d.typ}
				byName[a.name] = f
			}
			s := promtext.Series{Labels: make([]promtext.Label, 0, len(a.labels)/2), Value: a.value}
			for i := 0; i+1 < len(a.labels); i += 2 {
				s.Labels = append(s.Labels, promtext.Label{Name: a.labels[i], Value: a.labels[i+1]})
			}
			if f.Type == promtext.Histogram {
				s.Bounds, s.Counts = Bounds, a.counts
			}
			f.Series = append(f.Series, s)
		}
	}
	fams := make([]promtext.Family, 0, len(byName))
	for _, f := range byName {
		fams = append(fams, *f)
	}
	return fams
}
