//go:build linux

package isolate

import (
	"encoding/json"
	"testing"

	"github.com/hybrid-server/hybrid/internal/jsonw"
)

// AppendStatsFields writes what encoding/json writes for Stats(), probing
// or probed, and allocates nothing.
func TestAppendStatsFieldsIsStatsJSON(t *testing.T) {
	iso := &Isolator{probed: make(chan struct{})}
	iso.cpu.Add(1)
	iso.inputErr.Add(2)
	iso.crashed.Add(3)
	iso.timeout.Add(4)
	iso.memory.Add(5)
	iso.ok.Add(6)
	iso.started.Add(7)
	iso.peakChild.Store(8 << 20)
	check := func(when string) {
		want, _ := json.Marshal(iso.Stats())
		o := jsonw.Open(nil)
		iso.AppendStatsFields(&o)
		if got := o.Close(); string(got) != string(want) {
			t.Errorf("%s: AppendStatsFields =\n%s\nwant\n%s", when, got, want)
		}
	}
	check("probing")
	iso.violation.Add(9)
	iso.caps = Capabilities{Memory: "cgroup v1 memory limit", Network: "seccomp: no socket", CPU: "RLIMIT_CPU",
		WallClock: "timer", User: "uid 65534 gid 65534", Files: "seccomp: no open", Processes: "seccomp"}
	close(iso.probed)
	check("probed")
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { o := jsonw.Open(buf[:0]); iso.AppendStatsFields(&o); buf = o.Close() }); n != 0 {
		t.Errorf("AppendStatsFields: %v allocations; want 0", n)
	}
}
