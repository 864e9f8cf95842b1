package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// children returns the pids whose parent is pid, and whether any is a zombie.
func children(pid int) (pids []int, zombies int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == pid {
			p, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			pids = append(pids, p)
			if fields[0] == "Z" {
				zombies++
			}
		}
	}
	return pids, zombies
}

func fdCount(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}

// sleepers counts the processes the fork fault starts, anywhere.
func sleepers() int {
	n := 0
	envs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, f := range envs {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "HYBRID_ROLE=fault-sleeper") {
			n++
		}
	}
	return n
}

// Each hostile child gets its typed outcome, the worker keeps serving other
// requests meanwhile, and nothing is left running afterwards.
func TestIsolateContainsFaults(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--isolate-timeout", "1500ms", "--isolate-memory", "96MiB",
		"--isolate-warm", "1", "--pool-size", "2")
	base := "http://" + c.addr
	worker := c.snapshot().Workers[0].PID
	for _, tc := range []struct {
		fault  string
		status int
		code   string
	}{
		{"panic", 500, "isolate_crashed"},
		{"segv", 500, "isolate_crashed"},
		{"alloc", 422, "memory_limit"},
		{"spin", 504, "isolate_timeout"},
		{"sleep", 504, "isolate_timeout"},
		{"dial?addr=" + c.addr, 422, "dial_failed"},
	} {
		// Another request is served while the fault runs.
		var wg sync.WaitGroup
		wg.Add(1)
		var side reply
		go func() {
			defer wg.Done()
			time.Sleep(100 * time.Millisecond)
			side = post(t, base+"/v1/hash/sha256", []byte("abc"))
		}()
		r := post(t, base+"/_test/isolate/"+tc.fault, nil)
		wg.Wait()
		if r.status != tc.status || !strings.Contains(string(r.body), `"code":"`+tc.code+`"`) {
			t.Errorf("fault %s = %d %s; want %d %s", tc.fault, r.status, r.body, tc.status, tc.code)
		}
		if strings.Contains(string(r.body), "goroutine") || strings.Contains(string(r.body), "panic:") {
			t.Errorf("fault %s leaked its stderr into the response: %s", tc.fault, r.body)
		}
		if side.status != 200 {
			t.Errorf("while %s ran, another request got %d %s", tc.fault, side.status, side.body)
		}
	}
	if r := post(t, base+"/_test/isolate/dial?addr="+c.addr, nil); !strings.Contains(string(r.body), "unreachable") {
		t.Errorf("a child reached the network: %s", r.body)
	}
	r := post(t, base+"/_test/isolate/fork", nil)
	if r.status != 200 {
		t.Errorf("fork fault = %d %s", r.status, r.body)
	}
	c.waitFor(3*time.Second, "the fork fault's processes to be gone", func() bool { return sleepers() == 0 })
	if log := c.logs.find("isolate child crashed"); len(log) < 2 || !strings.Contains(fmt.Sprint(log[0]["stderr_tail"]), "panic") {
		t.Errorf("crash log lines = %v; want the signal and stderr tail logged", log)
	}
	if s := c.snapshot(); s.Workers[0].PID != worker || s.Forks != 1 {
		t.Errorf("the worker changed: %+v", s)
	}
	// Only the one warm child remains.
	c.waitFor(3*time.Second, "only the warm child left", func() bool {
		kids, zombies := children(worker)
		return len(kids) == 1 && zombies == 0
	})
}

func TestIsolateCPULimit(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--isolate-cpu", "1s", "--isolate-timeout", "8s")
	start := time.Now()
	r := post(t, "http://"+c.addr+"/_test/isolate/spin", nil)
	if r.status != 422 || !strings.Contains(string(r.body), `"code":"cpu_limit"`) {
		t.Errorf("spin with a 1s CPU limit = %d %s; want 422 cpu_limit", r.status, r.body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cpu_limit after %v; want about 2s (RLIMIT_CPU hard limit)", took)
	}
}

// Many tasks, crashes and timeouts included, leave no child, zombie or
// descriptor behind; --isolate-reuse lets one child serve several tasks.
func TestIsolateLeavesNothingBehind(t *testing.T) {
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--isolate-timeout", "300ms", "--isolate-warm", "2",
		"--isolate-reuse", "4", "--allow-mode-override")
	base := "http://" + c.addr
	worker := c.snapshot().Workers[0].PID
	// The first isolated task starts the warm children; count from there.
	if r := post(t, base+"/v1/hash/blake3?mode=isolate", []byte("warm up")); r.status != 200 {
		t.Fatalf("first isolated task = %d %s", r.status, r.body)
	}
	c.waitFor(3*time.Second, "the warm children", func() bool { kids, _ := children(worker); return len(kids) == 2 })
	fdsBefore := fdCount(worker)
	const rounds = 60
	client := freshClient()
	for i := range rounds {
		url := base + "/v1/hash/blake3?mode=isolate"
		switch i % 6 {
		case 4:
			url = base + "/_test/isolate/panic"
		case 5:
			url = base + "/_test/isolate/sleep"
		}
		resp, err := client.Post(url, "application/octet-stream", strings.NewReader("data"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if i%6 < 4 && resp.StatusCode != http.StatusOK {
			t.Fatalf("isolated hash #%d = %d", i, resp.StatusCode)
		}
	}
	var h struct {
		Isolate struct {
			Started  uint64            `json:"children_started"`
			Outcomes map[string]uint64 `json:"outcomes"`
		}
	}
	getJSON(freshClient(), base+"/health", &h)
	if h.Isolate.Outcomes["ok"] != 41 || h.Isolate.Outcomes["isolate_crashed"] != 10 || h.Isolate.Outcomes["isolate_timeout"] != 10 {
		t.Errorf("outcomes %v; want 41 ok, 10 crashed, 10 timeouts", h.Isolate.Outcomes)
	}
	// 40 reusable tasks in children that serve 4 each, plus 20 lost children
	// and the spares: far fewer starts than tasks.
	if h.Isolate.Started >= rounds {
		t.Errorf("children started = %d for %d tasks; want reuse to start fewer", h.Isolate.Started, rounds)
	}
	c.waitFor(3*time.Second, "no children but the 2 warm ones, no zombies", func() bool {
		kids, zombies := children(worker)
		return len(kids) <= 2 && zombies == 0
	})
	if fds := fdCount(worker); fds > fdsBefore+4 {
		t.Errorf("worker descriptors %d → %d after %d isolated tasks", fdsBefore, fds, rounds)
	}
}

// TestIsolateSoak runs 10,000 isolated tasks, crashes and timeouts included,
// and checks that no child, zombie or descriptor is left. It takes minutes,
// so it runs only with HYBRID_SOAK=1.
func TestIsolateSoak(t *testing.T) {
	if os.Getenv("HYBRID_SOAK") == "" {
		t.Skip("HYBRID_SOAK not set: the 10,000-task soak takes minutes (see bench/RESULTS.md)")
	}
	env, _ := faultFile(t)
	c := startCluster(t, env, 1, "--workers", "1", "--isolate-timeout", "200ms", "--isolate-warm", "2",
		"--allow-mode-override", "--pool-size", "2")
	base := "http://" + c.addr
	worker := c.snapshot().Workers[0].PID
	post(t, base+"/v1/hash/sha256?mode=isolate", []byte("warm up"))
	time.Sleep(500 * time.Millisecond)
	fdsBefore := fdCount(worker)
	total := 10_000
	if n, err := strconv.Atoi(os.Getenv("HYBRID_SOAK")); err == nil && n > 1 {
		total = n // HYBRID_SOAK=N runs N tasks
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	next := make(chan int)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := freshClient()
			for i := range next {
				url := base + "/v1/hash/sha256?mode=isolate"
				switch {
				case i%100 == 99:
					url = base + "/_test/isolate/sleep"
				case i%10 == 9:
					url = base + "/_test/isolate/panic"
				}
				resp, err := client.Post(url, "application/octet-stream", strings.NewReader("soak"))
				if err != nil {
					t.Errorf("task %d: %v", i, err)
					continue
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	for i := range total {
		next <- i
	}
	close(next)
	wg.Wait()
	t.Logf("%d isolated tasks in %v: statuses %v", total, time.Since(start).Round(time.Second), statuses)
	want := map[int]int{200: total * 9 / 10, 500: total/10 - total/100, 504: total / 100}
	if statuses[200] != want[200] || statuses[500] != want[500] || statuses[504] != want[504] {
		t.Errorf("statuses %v; want %v", statuses, want)
	}
	c.waitFor(5*time.Second, "only the warm children, no zombies", func() bool {
		kids, zombies := children(worker)
		return len(kids) <= 2 && zombies == 0
	})
	if fds := fdCount(worker); fds > fdsBefore+4 {
		t.Errorf("worker descriptors %d → %d after %d tasks", fdsBefore, fds, total)
	}
	if n := len(cgroupsOf(worker)); n > 2*2 {
		t.Errorf("%d of the worker's isolate cgroups left", n)
	}
}

// cgroupsOf lists the isolate cgroups a worker has now.
func cgroupsOf(worker int) []string {
	pattern := fmt.Sprintf("hybrid-isolate-%d-*", worker)
	dirs, _ := filepath.Glob("/sys/fs/cgroup/memory/*/*/" + pattern)
	more, _ := filepath.Glob("/sys/fs/cgroup/pids/" + pattern)
	return append(dirs, more...)
}

// A worker killed by SIGKILL cannot remove its children's cgroups; its
// replacement sweeps them at start, and the names of a reused pid never
// collide.
func TestStaleIsolateCgroupsAreSwept(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--allow-mode-override", "--restart-backoff", "50ms")
	base := "http://" + c.addr
	if r := post(t, base+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Fatalf("isolated task = %d %s", r.status, r.body)
	}
	old := c.snapshot().Workers[0].PID
	c.waitFor(3*time.Second, "the warm children's cgroups", func() bool { return len(cgroupsOf(old)) > 0 })
	if len(cgroupsOf(old)) == 0 {
		t.Skip("no per-child cgroups on this host")
	}
	syscall.Kill(old, syscall.SIGKILL)
	c.waitFor(10*time.Second, "a replacement worker", func() bool {
		s := c.snapshot()
		return s.WorkersReady == 1 && s.Workers[0].PID != old
	})
	c.waitFor(5*time.Second, "the dead worker's cgroups to be swept", func() bool { return len(cgroupsOf(old)) == 0 })
	if r := post(t, base+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Errorf("isolated task after the sweep = %d %s", r.status, r.body)
	}
}
