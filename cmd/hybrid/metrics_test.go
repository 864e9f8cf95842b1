package main

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/metrics"
	"github.com/hybrid-server/hybrid/procpool"

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
	for range 2 {
		if st := do("POST", base+"/v1/hash/sha256?mode=isolate", "hello"); st != 200 {
			t.Fatalf("hash in an isolated child: %d; want 200", st)
		}
	}
	// An isolated task whose input the child refuses: outcome input_error.
	if st := do("POST", base+"/v1/decompress/zstd?mode=isolate", "not zstd"); st != 422 {
		t.Fatalf("corrupt zstd in an isolated child: %d; want 422", st)
	}

	counts := func(s scrape) bool {
		ok := s.sum("hybrid_http_requests_total", "route=/v1/hash/", "method=POST", "status=200", "mode=pool") == 7 &&
			s.sum("hybrid_http_requests_total", "route=unmatched", "method=GET", "status=404", "mode=") == 3 &&
			s.sum("hybrid_http_request_duration_seconds", "route=/v1/hash/", "mode=pool") == 7
		return ok && s.sum("hybrid_http_requests_total", "route=/v1/hash/", "mode=isolate", "status=200") == 2 &&
			s.sum("hybrid_http_requests_total", "route=/v1/decompress/", "mode=isolate", "status=422") == 1
	}
	var first scrape
	c.waitFor(10*time.Second, "the scrape to count the requests made", func() bool {
		first = c.scrape()
		return counts(first)
	})
	if got := first.sum("hybrid_http_requests_total"); got != 13 {
		t.Errorf("requests_total sums to %v over %v; want 13", got, first.counters())
	}
	if ok, bad := first.sum("hybrid_isolate_outcomes_total", "outcome=ok"), first.sum("hybrid_isolate_outcomes_total", "outcome=input_error"); ok != 2 || bad != 1 ||
		first.sum("hybrid_isolate_outcomes_total") != 3 {
		t.Errorf("isolate outcomes: ok %v, input_error %v, all %v; want 2, 1 and 3", ok, bad, first.sum("hybrid_isolate_outcomes_total"))
	}
	lintNames(t, first)
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

// lintNames holds a scrape to Prometheus's naming conventions: hybrid_ and
// snake_case; a counter ends in _total and nothing else does; a histogram
// is of seconds or bytes; a unit (seconds, bytes) comes last, before a
// counter's _total; no unit other than the base ones; a HELP for each.
func lintNames(t *testing.T, s scrape) {
	t.Helper()
	for _, problem := range nameProblems(s) {
		t.Errorf("GET /metrics: %s", problem)
	}
}

var (
	metricName  = regexp.MustCompile(`^hybrid_[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	labelName   = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)
	nonBaseUnit = regexp.MustCompile(`_(ms|msec|milliseconds|us|microseconds|ns|nanoseconds|minutes|hours|days|kb|mb|gb|kib|mib|gib|kilobytes|megabytes|percent|ratio_percent)(_|$)`)
)

func nameProblems(s scrape) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(s)) {
		f := s[name]
		bad := func(format string, a ...any) { out = append(out, name+": "+fmt.Sprintf(format, a...)) }
		if !metricName.MatchString(name) {
			bad("not hybrid_ and snake_case")
		}
		if strings.TrimSpace(f.GetHelp()) == "" {
			bad("no HELP")
		}
		base := name
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			var ok bool
			if base, ok = strings.CutSuffix(name, "_total"); !ok {
				bad("a counter without _total")
			}
		case dto.MetricType_GAUGE:
			if strings.HasSuffix(name, "_total") {
				bad("a gauge named _total")
			}
		case dto.MetricType_HISTOGRAM:
			if !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_bytes") {
				bad("a histogram of neither seconds nor bytes")
			}
		default:
			bad("type %v; want counter, gauge or histogram", f.GetType())
		}
		for _, unit := range []string{"seconds", "bytes"} {
			if strings.Contains(base+"_", "_"+unit+"_") && !strings.HasSuffix(base, "_"+unit) {
				bad("its unit (%s) is not last", unit)
			}
		}
		if nonBaseUnit.MatchString(name) {
			bad("a unit other than seconds and bytes")
		}
		labels := map[string]bool{}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				labels[l.GetName()] = true
			}
		}
		for l := range labels {
			if !labelName.MatchString(l) {
				bad("label %q is not snake_case", l)
			}
		}
	}
	return out
}

// The lint finds what it is for.
func TestNameLint(t *testing.T) {
	help := "h"
	fam := func(name string, typ dto.MetricType) *dto.MetricFamily {
		return &dto.MetricFamily{Name: &name, Help: &help, Type: &typ}
	}
	for _, tc := range []struct {
		fam  *dto.MetricFamily
		want string
	}{
		{fam("hybrid_requests_total", dto.MetricType_COUNTER), ""},
		{fam("hybrid_http_in_flight_body_bytes", dto.MetricType_GAUGE), ""},
		{fam("hybrid_http_body_bytes_in_flight", dto.MetricType_GAUGE), "unit (bytes) is not last"},
		{fam("hybrid_requests", dto.MetricType_COUNTER), "without _total"},
		{fam("hybrid_open_total", dto.MetricType_GAUGE), "gauge named _total"},
		{fam("hybrid_latency", dto.MetricType_HISTOGRAM), "neither seconds nor bytes"},
		{fam("hybrid_wait_ms", dto.MetricType_GAUGE), "other than seconds"},
		{fam("hybrid_queueDepth", dto.MetricType_GAUGE), "snake_case"},
		{&dto.MetricFamily{Name: proto("hybrid_x_total"), Type: dto.MetricType_COUNTER.Enum()}, "no HELP"},
	} {
		got := strings.Join(nameProblems(scrape{tc.fam.GetName(): tc.fam}), "; ")
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("lint of %s = %q; want %q", tc.fam.GetName(), got, tc.want)
		}
	}
}

func proto(s string) *string { return &s }

// The task pool's gauges and refusals, the open connections and the
// requests in flight, as a scrape of the binary shows them: one worker
// with one run slot and a queue of one, both taken by 3 s tasks, with
// idle kept-alive connections and slow requests held open; then the
// requests the full pool refuses, each counted once.
func TestMetricsPoolConnectionsAndRefusals(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--pool-size", "1", "--pool-queue", "1", "--heartbeat-interval", "100ms")
	base := "http://" + c.addr
	const idle = 4
	for range idle { // kept alive after one request, then idle
		conn, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 200 || resp.Close {
			t.Fatalf("GET /ready on a kept-alive connection: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	slow := []string{base + "/_test/sleep?ms=3000", base + "/_test/sleep?ms=3000", base + "/_test/task?ms=3000", base + "/_test/task?ms=3000"}
	statuses := make(chan int, len(slow))
	for _, url := range slow { // each on a connection of its own
		method := "GET"
		if strings.Contains(url, "/_test/task") {
			method = "POST"
		}
		go func() {
			req, _ := http.NewRequest(method, url, nil)
			resp, err := freshClient().Do(req)
			if err != nil {
				statuses <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	var busy scrape
	c.waitFor(5*time.Second, "the scrape to show the full pool, the connections and the requests in flight", func() bool {
		busy = c.scrape()
		return busy.sum("hybrid_tasks_running", "pool=pool", "worker=1") == 1 && busy.sum("hybrid_tasks_queued", "pool=pool", "worker=1") == 1 &&
			busy.sum("hybrid_worker_open_connections") >= idle+float64(len(slow)) && busy.sum("hybrid_http_requests_in_flight") >= float64(len(slow))
	})
	if w := busy.sum("hybrid_tasks_predicted_wait_seconds", "pool=pool", "worker=1"); w <= 0 {
		t.Errorf("predicted wait with a task running and one queued = %v s; want > 0", w)
	}
	if n := busy.sum("hybrid_tasks_capacity", "pool=pool", "worker=1"); n != 1 {
		t.Errorf("pool capacity = %v; want 1 (--pool-size 1)", n)
	}
	t.Logf("busy: %v open connections, %v requests in flight, predicted wait %v s", busy.sum("hybrid_worker_open_connections"),
		busy.sum("hybrid_http_requests_in_flight"), busy.sum("hybrid_tasks_predicted_wait_seconds", "pool=pool"))

	refused := 0
	for range 3 {
		r := post(t, base+"/_test/task?ms=0", nil)
		if r.status != 503 {
			t.Fatalf("a task to a full pool: %d %s; want 503", r.status, r.body)
		}
		refused++
	}
	for range slow {
		if st := <-statuses; st != 200 {
			t.Errorf("a slow request: %d; want 200", st)
		}
	}
	var after scrape
	c.waitFor(5*time.Second, "the scrape to count the refusals and the slow requests", func() bool {
		after = c.scrape()
		return after.sum("hybrid_tasks_completed_total", "pool=pool") == 2 && after.sum("hybrid_http_requests_in_flight") == 0
	})
	if got := after.sum("hybrid_tasks_refused_total", "pool=pool"); got != float64(refused) {
		t.Errorf("hybrid_tasks_refused_total{pool=pool} = %v; the client saw %d 503s", got, refused)
	}
	if got := after.sum("hybrid_http_requests_total", "route=/_test/task", "status=503"); got != float64(refused) {
		t.Errorf("requests_total{route=/_test/task,status=503} = %v; want %d", got, refused)
	}
	if r, q := after.sum("hybrid_tasks_running", "pool=pool"), after.sum("hybrid_tasks_queued", "pool=pool"); r != 0 || q != 0 {
		t.Errorf("after the load: %v running, %v queued; want 0 and 0", r, q)
	}
}

// hybrid_circuit_open is 1 while the circuit is open and 0 once a reload
// closed it: here opened at once by workers that exit 78.
func TestMetricsCircuitOpen(t *testing.T) {
	env, setFault := faultFile(t)
	setFault("config")
	c := startCluster(t, env, 0, "--workers", "2", "--restart-backoff", "20ms")
	c.waitFor(10*time.Second, "the circuit to open", func() bool { return c.snapshot().Circuit == "open" })
	if s := c.scrape(); s.sum("hybrid_circuit_open") != 1 || s.sum("hybrid_workers_ready") != 0 || s.sum("hybrid_workers_wanted") != 2 {
		t.Errorf("circuit open: hybrid_circuit_open %v, workers_ready %v, workers_wanted %v; want 1, 0, 2",
			s.sum("hybrid_circuit_open"), s.sum("hybrid_workers_ready"), s.sum("hybrid_workers_wanted"))
	}
	setFault("")
	c.signal(syscall.SIGHUP)
	c.waitFor(10*time.Second, "the circuit to close and 2 workers to be ready", func() bool {
		s := c.snapshot()
		return s.Circuit == "closed" && s.WorkersReady == 2 && !s.Reloading
	})
	if s := c.scrape(); s.sum("hybrid_circuit_open") != 0 || s.sum("hybrid_workers_ready") != 2 || s.sum("hybrid_reloads_total") != 1 {
		t.Errorf("after the reload: hybrid_circuit_open %v, workers_ready %v, reloads_total %v; want 0, 2, 1",
			s.sum("hybrid_circuit_open"), s.sum("hybrid_workers_ready"), s.sum("hybrid_reloads_total"))
	}
}

// Counters stay exact across a recycle (--max-requests) and a scale-down:
// the exited worker's last heartbeat, sent after its drain, stays in the
// sums.
func TestMetricsAcrossRecycleAndScaleDown(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--max-requests", "20", "--heartbeat-interval", "100ms")
	hash := func(client *http.Client) {
		t.Helper()
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
	hashes := func(s scrape) float64 {
		return s.sum("hybrid_http_requests_total", "route=/v1/hash/", "method=POST", "status=200", "mode=pool")
	}
	waitHashes := func(want float64) scrape {
		t.Helper()
		var s scrape
		c.waitFor(10*time.Second, fmt.Sprintf("the scrape to count %v hashes", want), func() bool {
			s = c.scrape()
			return hashes(s) == want
		})
		return s
	}
	// One kept-alive connection: one worker serves them all and passes
	// --max-requests (20, plus up to 10 %).
	client := keptAlive()
	for range 30 {
		hash(client)
	}
	before := waitHashes(30)
	line := c.waitLog("recycling worker", 10*time.Second)
	recycled := int(line["worker_pid"].(float64))
	c.waitFor(15*time.Second, "the recycled worker to exit, its successor ready", func() bool {
		s := c.snapshot()
		if len(s.Workers) != 2 || s.WorkersReady != 2 {
			return false
		}
		for _, w := range s.Workers {
			if w.PID == recycled {
				return false
			}
		}
		return true
	})
	afterRecycle := c.scrape()
	notBackwards(t, "a recycle", before, afterRecycle)
	if got := hashes(afterRecycle); got != 30 {
		t.Errorf("after the recycle: %v hashes; want 30", got)
	}
	if f, cr := afterRecycle.sum("hybrid_worker_forks_total"), afterRecycle.sum("hybrid_worker_crashes_total"); f != 3 || cr != 0 {
		t.Errorf("after the recycle: forks %v, crashes %v; want 3 and 0", f, cr)
	}

	// Then both workers serve (a connection each time), and scale 1 stops
	// slot 2's worker: its count stays.
	client.CloseIdleConnections()
	slot2 := func() (pid int, requests uint64) {
		for _, w := range c.snapshot().Workers {
			if w.ID == 2 && w.State == procpool.StateReady {
				return w.PID, w.Requests
			}
		}
		return 0, 0
	}
	n := 0
	for ; n < 10; n++ {
		hash(freshClient())
	}
	c.waitFor(10*time.Second, "slot 2's worker to serve some of them", func() bool {
		if _, r := slot2(); r > 0 {
			return true
		}
		hash(freshClient())
		n++
		time.Sleep(100 * time.Millisecond)
		return false
	})
	beforeScale := waitHashes(float64(30 + n))
	gone, _ := slot2()
	if out, errOut, code := runHybrid(t, nil, "scale", "1", "--admin-addr", c.admin); code != 0 {
		t.Fatalf("hybrid scale 1: exit %d: %s%s", code, out, errOut)
	}
	c.waitFor(15*time.Second, "slot 2's worker to exit", func() bool {
		s := c.snapshot()
		return len(s.Workers) == 1 && s.Workers[0].PID != gone && s.WorkersWanted == 1
	})
	afterScale := c.scrape()
	notBackwards(t, "scale 1", beforeScale, afterScale)
	if got := hashes(afterScale); got != float64(30+n) {
		t.Errorf("after scale 1: %v hashes; want %d", got, 30+n)
	}
	if got := afterScale.sum("hybrid_worker_goroutines"); afterScale.sum("hybrid_worker_goroutines", "worker=2") != 0 || got <= 0 {
		t.Errorf("after scale 1: goroutines gauges %v; want worker 1's alone", afterScale["hybrid_worker_goroutines"])
	}
}

// A client cannot make a worker's snapshot outgrow its heartbeat (which
// the primary would drop, freezing that worker's counters): past
// metrics.MaxSeries combinations of route, method, status and mode, the
// rest are counted by their route and status class (status "2xx", "5xx",
// method "OTHER", mode ""), every request still counted once; the worker
// says so once in its log, and its counters move on. A flood of cheap
// combinations does not blind status=~"5.." to what follows: a route's
// 200s and 500s after it still count under their class.
func TestMetricsFoldPastTheSeriesBudget(t *testing.T) {
	env, _ := faultFile(t) // more routes
	c := startCluster(t, env, 1, "--workers", "1", "--allow-mode-override", "--heartbeat-interval", "100ms", "--cache-size", "0",
		"--max-body", "1KiB")
	base := "http://" + c.addr
	client := keptAlive()
	made := 0
	do := func(method, path string, body ...string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(strings.Join(append(body, "x"), "")))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		made++
	}
	paths := []string{"/v1/hash/sha256", "/v1/hash/nope", "/v1/password/hash/bcrypt", "/v1/password/verify", "/v1/compress/zstd",
		"/v1/decompress/zstd", "/v1/image/resize", "/v1/image/info", "/_test/task", "/_test/sleep", "/_test/panic", "/health",
		"/ready", "/no/such/route"}
	methods := []string{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW"}
	for _, p := range paths {
		for _, m := range methods {
			do(m, p) // 405 on most routes: ~9 series a route
		}
		for _, mode := range []string{"inline", "pool"} {
			do("POST", p+"?mode="+mode+"&level=99&encoding=nope")
		}
	}
	for _, m := range methods {
		do(m, "/v1/hash/sha256", strings.Repeat("x", 2048)) // 413 over --max-body: unmatched
	}
	var s scrape
	c.waitFor(10*time.Second, fmt.Sprintf("the scrape to count the %d requests", made), func() bool {
		s = c.scrape()
		return s.sum("hybrid_http_requests_total") == float64(made)
	})
	apart, folded := 0, 0.0
	for _, m := range s["hybrid_http_requests_total"].Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		if metrics.IsFoldedStatus(labels["status"]) {
			folded += m.Counter.GetValue()
			if labels["method"] != "OTHER" || labels["mode"] != "" {
				t.Errorf("a folded series %v; want method OTHER, mode \"\"", labels)
			}
		} else {
			apart++
		}
	}
	if apart != metrics.MaxSeries || folded == 0 {
		t.Errorf("%d requests: %d series apart and %v requests folded; want %d apart and the rest folded", made, apart, folded, metrics.MaxSeries)
	}
	if warns := c.logs.find("more request combinations than this worker counts apart"); len(warns) != 1 || warns[0]["level"] != "WARN" {
		t.Errorf("the worker's log says %v; want one WARN", warns)
	}
	size := s.sum("hybrid_worker_metrics_snapshot_bytes", "worker=1")
	if size <= 0 || size > procpool.MaxMetrics {
		t.Errorf("hybrid_worker_metrics_snapshot_bytes = %v; want the size of the last snapshot, within %d", size, procpool.MaxMetrics)
	}
	t.Logf("%d requests: %d series apart, %v folded, a snapshot of %v bytes", made, apart, folded, size)
	lintNames(t, s)

	// The worker's counters move on, those counted apart too: the first
	// requests (GET of a POST route) took a series of their own.
	get405 := func(s scrape) float64 {
		return s.sum("hybrid_http_requests_total", "route=/v1/hash/", "method=GET", "status=405", "mode=")
	}
	before := get405(s)
	if before != 2 {
		t.Errorf("GET /v1/hash/sha256 and /v1/hash/nope counted %v times under their own series; want 2", before)
	}
	for range 3 {
		do("GET", "/v1/hash/sha256")
	}
	c.waitFor(10*time.Second, "the scrape to count 3 more GETs", func() bool {
		s = c.scrape()
		return get405(s) == before+3 && s.sum("hybrid_http_requests_total") == float64(made)
	})

	// Past the budget, a workload route's 200s and 500s keep their class,
	// as status=~"2.." and status=~"5.." match them. The test task's 500 (a
	// panicking task) is new to this worker, so it can only have been
	// folded: it must be under status "5xx".
	class := func(s scrape, route string, c byte) (n float64) {
		for _, m := range s["hybrid_http_requests_total"].Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if st := labels["status"]; labels["route"] == route && len(st) == 3 && st[0] == c {
				n += m.Counter.GetValue()
			}
		}
		return n
	}
	task, hashRoute := "/_test/task", "/v1/hash/"
	if n := s.sum("hybrid_http_requests_total", "route="+task, "status=500"); n != 0 {
		t.Fatalf("a 500 on %s before the test made one: %v", task, n)
	}
	task2xx, task5xx, hash2xx := class(s, task, '2'), class(s, task, '5'), class(s, hashRoute, '2')
	post := func(path, body string) int {
		t.Helper()
		resp, err := client.Post(base+path, "application/octet-stream", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		made++
		return resp.StatusCode
	}
	for range 3 {
		if code := post(task+"?ms=0", ""); code != 200 {
			t.Fatalf("POST %s?ms=0: %d; want 200", task, code)
		}
		if code := post(task+"?ms=0&panic=1", ""); code != 500 {
			t.Fatalf("POST %s?ms=0&panic=1: %d; want 500", task, code)
		}
		if code := post("/v1/hash/sha256", "abc"); code != 200 {
			t.Fatalf("POST /v1/hash/sha256: %d; want 200", code)
		}
	}
	c.waitFor(10*time.Second, fmt.Sprintf("the scrape to count all %d requests", made), func() bool {
		s = c.scrape()
		return s.sum("hybrid_http_requests_total") == float64(made)
	})
	if got := class(s, task, '2') - task2xx; got != 3 {
		t.Errorf("%s: %v more requests with a 2xx status; want the 3 200s", task, got)
	}
	if got := class(s, task, '5') - task5xx; got != 3 {
		t.Errorf("%s: %v more requests with a 5xx status; want the 3 500s", task, got)
	}
	if got := s.sum("hybrid_http_requests_total", "route="+task, "status=5xx", "method=OTHER", "mode="); got != 3 {
		t.Errorf("%s: %v requests folded as 5xx; want the 3 500s, past the budget", task, got)
	}
	if got := class(s, hashRoute, '2') - hash2xx; got != 3 {
		t.Errorf("%s: %v more requests with a 2xx status; want the 3 200s", hashRoute, got)
	}
	if got := s.sum("hybrid_http_requests_total", "status=other"); got != 0 {
		t.Errorf("%v requests under status \"other\"; every status here is 100-599", got)
	}
}
