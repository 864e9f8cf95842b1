package main

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape is one GET /metrics, parsed by Prometheus's own text parser.
type scrape map[string]*dto.MetricFamily

func (c *cluster) scrape() scrape {
	c.t.Helper()
	resp, err := adminClient.Get("http://" + c.admin + "/metrics")
	if err != nil {
		c.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" {
		c.t.Fatalf("GET /metrics: %d, Content-Type %q:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		c.t.Fatalf("the Prometheus text parser refuses GET /metrics: %v\n%s", err, body)
	}
	return fams
}

// sum adds the values (a histogram's sample count) of name's series whose
// labels include want ("name=value" pairs).
func (s scrape) sum(name string, want ...string) float64 {
	var total float64
	f := s[name]
	if f == nil {
		return 0
	}
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			match = match && have[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// counters returns every counter's value and every histogram's count and
// buckets, by series.
func (s scrape) counters() map[string]float64 {
	out := map[string]float64{}
	for name, f := range s {
		for _, m := range f.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			id := name + "{" + strings.Join(labels, ",") + "}"
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[id] = m.Counter.GetValue()
			case dto.MetricType_HISTOGRAM:
				out[id+"_count"] = float64(m.Histogram.GetSampleCount())
				for _, b := range m.Histogram.Bucket {
					out[fmt.Sprintf("%s_le_%g", id, b.GetUpperBound())] = float64(b.GetCumulativeCount())
				}
			}
		}
	}
	return out
}

// notBackwards fails the test for any counter of before that after lacks
// or has lower.
func notBackwards(t *testing.T, when string, before, after scrape) {
	t.Helper()
	a := after.counters()
	for id, v := range before.counters() {
		if got, ok := a[id]; !ok || got < v {
			t.Errorf("%s: %s went from %v to %v (present: %v)", when, id, v, got, ok)
		}
	}
}

func TestMetricsCountRequestsAndSurviveReloadAndKill(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--allow-mode-override", "--heartbeat-interval", "200ms")
	base := "http://" + c.addr
	client := &http.Client{Timeout: 20 * time.Second} // kept alive, as users do
	do := func(method, url, body string) int {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 7 {
		if st := do("POST", base+"/v1/hash/sha256", "hello"); st != 200 {
			t.Fatalf("hash: %d", st)
		}
	}
	for range 3 {
		if st := do("GET", base+"/no/such/route", ""); st != 404 {
			t.Fatalf("404 route: %d", st)
		}
	}
	isoStatus := map[int]int{}
	for range 2 {
		isoStatus[do("POST", base+"/v1/hash/sha256?mode=isolate", "hello")]++
	}

	counts := func(s scrape) bool {
		ok := s.sum("hybrid_http_requests_total", "route=/v1/hash/", "method=POST", "status=200", "mode=pool") == 7 &&
			s.sum("hybrid_http_requests_total", "route=unmatched", "method=GET", "status=404", "mode=") == 3 &&
			s.sum("hybrid_http_request_duration_seconds", "route=/v1/hash/", "mode=pool") == 7
		for st, n := range isoStatus {
			ok = ok && s.sum("hybrid_http_requests_total", "route=/v1/hash/", "mode=isolate", fmt.Sprintf("status=%d", st)) == float64(n)
		}
		return ok
	}
	var first scrape
	c.waitFor(10*time.Second, "the scrape to count the requests made", func() bool {
		first = c.scrape()
		return counts(first)
	})
	if got := first.sum("hybrid_http_requests_total"); got != 12 {
		t.Errorf("requests_total sums to %v over %v; want 12", got, first.counters())
	}
	if isoStatus[200] == 2 && first.sum("hybrid_isolate_outcomes_total", "outcome=ok") != 2 {
		t.Errorf("isolate outcomes ok = %v; want 2", first.sum("hybrid_isolate_outcomes_total", "outcome=ok"))
	}
	if first.sum("hybrid_tasks_completed_total", "pool=pool") != 7 {
		t.Errorf("pool tasks completed = %v; want 7", first.sum("hybrid_tasks_completed_total", "pool=pool"))
	}
	for _, w := range []string{"1", "2"} {
		if first.sum("hybrid_worker_resident_memory_bytes", "worker="+w) <= 0 || first.sum("hybrid_worker_goroutines", "worker="+w) <= 0 {
			t.Errorf("worker %s has no RSS or goroutines gauge", w)
		}
	}
	if first.sum("hybrid_build_info", "goversion="+runtime.Version()) != 1 ||
		first.sum("hybrid_workers_ready") != 2 || first.sum("hybrid_worker_forks_total") != 2 {
		t.Errorf("primary metrics: build_info %v, workers_ready %v, forks %v", first.sum("hybrid_build_info"),
			first.sum("hybrid_workers_ready"), first.sum("hybrid_worker_forks_total"))
	}

	// A rolling reload replaces both workers: their counts stay.
	old := c.readyPIDs()
	c.signal(syscall.SIGHUP)
	c.waitFor(20*time.Second, "the reload to replace both workers", func() bool {
		s := c.snapshot()
		if len(s.Workers) != 2 || s.Reloading {
			return false
		}
		for _, w := range s.Workers {
			if old[w.PID] {
				return false
			}
		}
		return true
	})
	afterReload := c.scrape()
	notBackwards(t, "reload", first, afterReload)
	if !counts(afterReload) || afterReload.sum("hybrid_reloads_total") != 1 {
		t.Errorf("after the reload: counts %v, reloads_total %v", afterReload.counters(), afterReload.sum("hybrid_reloads_total"))
	}

	// kill -9 a worker once its heartbeat carried the requests it served.
	for range 5 {
		do("POST", base+"/v1/hash/sha256", "hello")
	}
	var beforeKill scrape
	c.waitFor(10*time.Second, "the scrape to count 12 hashes in pool mode", func() bool {
		beforeKill = c.scrape()
		return beforeKill.sum("hybrid_http_requests_total", "route=/v1/hash/", "mode=pool") == 12
	})
	victim := slices.Sorted(maps.Keys(c.readyPIDs()))[0]
	syscall.Kill(victim, syscall.SIGKILL)
	// One snapshot answers both questions: read from two, the first can
	// still count the victim ready while the second no longer lists it.
	c.waitFor(20*time.Second, "the killed worker's restart", func() bool {
		ready := c.readyPIDs()
		return len(ready) == 2 && !ready[victim]
	})
	afterKill := c.scrape()
	notBackwards(t, "kill -9", beforeKill, afterKill)
	if got := afterKill.sum("hybrid_http_requests_total", "route=/v1/hash/", "mode=pool"); got != 12 {
		t.Errorf("after kill -9: %v pool hashes; want 12", got)
	}
	if afterKill.sum("hybrid_worker_crashes_total") != 1 || afterKill.sum("hybrid_worker_restarts_total") != 1 {
		t.Errorf("after kill -9: crashes %v, restarts %v; want 1 and 1",
			afterKill.sum("hybrid_worker_crashes_total"), afterKill.sum("hybrid_worker_restarts_total"))
	}
}

// Two upgrades, alternating builds: the new primaries carry the old ones'
// totals, so that no counter or bucket goes backwards, the request counts
// stay exact, and upgrades_total reads 2 on the last primary.
func TestMetricsSurviveUpgrades(t *testing.T) {
	binB, err := secondBuild()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "hybrid")
	flip(t, link, binPath)
	c := startClusterCmd(t, serveCmd(link, "--workers", "2", "--heartbeat-interval", "200ms"), nil, 2)
	t.Cleanup(c.killSeen)
	versionA := c.snapshot().Version
	// Kept-alive, as users' clients are. Each batch starts by dropping the
	// idle connections of the last one: after an upgrade they belong to a
	// drained primary's workers, which close idle connections after their
	// grace, and a POST (not replayable) racing that close would fail —
	// what any server's idle timeout does, and not what this test is about.
	client := keptAlive()
	hash := func(n int) {
		client.CloseIdleConnections()
		for range n {
			resp, err := client.Post("http://"+c.addr+"/v1/hash/sha256", "text/plain", strings.NewReader("hello"))
			if err != nil {
				t.Fatalf("hash: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("hash: %d", resp.StatusCode)
			}
		}
	}
	hashes := func(s scrape) float64 {
		return s.sum("hybrid_http_requests_total", "route=/v1/hash/", "method=POST", "status=200")
	}
	waitHashes := func(want float64) scrape {
		var s scrape
		c.waitFor(10*time.Second, fmt.Sprintf("the scrape to count %v hashes", want), func() bool {
			s = c.scrape()
			return hashes(s) == want && s.sum("hybrid_http_request_duration_seconds", "route=/v1/hash/") == want
		})
		return s
	}
	hash(9)
	before := waitHashes(9)

	flip(t, link, binB)
	c.upgradeTo(upgradeVersion, 2)
	hash(4) // served by the new primary's workers
	middle := waitHashes(13)
	notBackwards(t, "the first upgrade", before, middle)
	flip(t, link, binPath)
	c.upgradeTo(versionA, 2)
	hash(5)
	after := waitHashes(18)
	notBackwards(t, "the second upgrade", middle, after)
	notBackwards(t, "both upgrades", before, after)
	if got := after.sum("hybrid_http_requests_total"); got != 18 {
		t.Errorf("requests_total sums to %v; want 18", got)
	}
	if got := after.sum("hybrid_upgrades_total"); got != 2 {
		t.Errorf("upgrades_total = %v; want 2", got)
	}
	if got := after.sum("hybrid_worker_forks_total"); got != 6 {
		t.Errorf("worker_forks_total = %v; want 6 (2 workers per primary)", got)
	}
	if s := c.snapshot(); s.Upgrades != 2 || s.Forks != 6 {
		t.Errorf("/cluster: upgrades_total %d, forks_total %d; want 2 and 6", s.Upgrades, s.Forks)
	}
}
