package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/internal/procfs"
)

// children returns the pids whose parent is pid, and whether any is a zombie.
func children(pid int) (pids []int, zombies int) {
	procfs.Walk(func(s procfs.Stat) {
		if s.PPID == pid {
			pids = append(pids, s.PID)
			if s.State == 'Z' {
				zombies++
			}
		}
	})
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

// Each hostile child gets its typed outcome, on the cgroup path and without
// cgroups: the worker keeps serving other requests meanwhile, an attempt to
// leave the sandbox (a process, a socket, a signal to its worker, its own
// memory limit, a root-only file) is a sandbox_violation, a lie in the
// reply costs a crash in well under the isolate timeout, and nothing is
// left running afterwards.
func TestIsolateContainsFaults(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cgroup := range []string{"auto", "off"} {
		t.Run("cgroup="+cgroup, func(t *testing.T) {
			env, _ := faultFile(t)
			// RLIMIT_DATA also bounds the race detector's own mappings: give
			// a race-built child room to start.
			mem := "96MiB"
			if cgroup == "off" && raceEnabled {
				mem = "384MiB"
			}
			c := startCluster(t, env, 1, "--workers", "1", "--isolate-timeout", "1500ms", "--isolate-memory", mem,
				"--isolate-warm", "1", "--pool-size", "2", "--isolate-cgroup", cgroup)
			base := "http://" + c.addr
			worker := c.snapshot().Workers[0].PID
			for _, tc := range []struct {
				fault  string
				status int
				code   string
			}{
				{"panic", 500, "isolate_crashed"},
				{"segv", 500, "isolate_crashed"},
				{"header-panic", 500, "isolate_crashed"}, // "internal" if the worker had parsed the input
				{"alloc", 422, "memory_limit"},
				{"spin", 504, "isolate_timeout"},
				{"sleep", 504, "isolate_timeout"},
				{"dial?addr=" + c.addr, 422, "sandbox_violation"},
				{"fork", 422, "sandbox_violation"},
				{"kill-parent", 422, "sandbox_violation"},
				{"raise-limit", 422, "sandbox_violation"},
				{"read-file?path=" + secret, 422, "sandbox_violation"},
				{"lie-garbage", 500, "isolate_crashed"},
				{"lie-long-header", 500, "isolate_crashed"},
				{"lie-size", 500, "isolate_crashed"},
				{"lie-status", 500, "isolate_crashed"},
				{"lie-code", 500, "isolate_crashed"},
				{"lie-long-reply", 500, "isolate_crashed"},
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
				start := time.Now()
				r := post(t, base+"/_test/isolate/"+tc.fault, nil)
				took := time.Since(start)
				wg.Wait()
				if tc.fault == "alloc" && cgroup == "off" && r.status == 500 && strings.Contains(string(r.body), `"code":"isolate_crashed"`) {
					// Without a cgroup, RLIMIT_DATA stops the bomb; Go 1.26's
					// collector sometimes dies of the failed mapping with a
					// SIGSEGV instead of reporting it (seen 1 run in 2 in a
					// static build): contained, but typed as a crash.
					t.Logf("alloc without a cgroup: isolate_crashed (the runtime crashed on the refused mapping)")
					continue
				}
				if r.status != tc.status || !strings.Contains(string(r.body), `"code":"`+tc.code+`"`) {
					t.Errorf("fault %s = %d %s; want %d %s", tc.fault, r.status, r.body, tc.status, tc.code)
				}
				if strings.Contains(string(r.body), "goroutine") || strings.Contains(string(r.body), "panic:") ||
					strings.Contains(string(r.body), "secret") || len(r.body) > 1024 {
					t.Errorf("fault %s leaked into the response (%d bytes): %.200s", tc.fault, len(r.body), r.body)
				}
				if strings.HasPrefix(tc.fault, "lie-") && took > time.Second {
					t.Errorf("fault %s answered after %v; a lie must be caught at once, not at the 1.5s timeout", tc.fault, took)
				}
				if side.status != 200 {
					t.Errorf("while %s ran, another request got %d %s", tc.fault, side.status, side.body)
				}
			}
			c.waitFor(3*time.Second, "the fork fault's processes to be gone", func() bool { return sleepers() == 0 })
			if log := c.logs.find("isolate child crashed"); len(log) < 2 || !strings.Contains(fmt.Sprint(log[0]["stderr_tail"]), "panic") {
				t.Errorf("crash log lines = %v; want the signal and stderr tail logged", log)
			}
			var h struct {
				Isolate struct {
					Limits   map[string]string `json:"limits"`
					Outcomes map[string]uint64 `json:"outcomes"`
				}
			}
			getJSON(freshClient(), base+"/health", &h)
			if o := h.Isolate.Outcomes; o["sandbox_violation"] != 5 || o["isolate_crashed"]+o["memory_limit"] != 10 ||
				(cgroup != "off" && o["memory_limit"] != 1) {
				t.Errorf("outcomes %v; want 5 sandbox_violation, 9 isolate_crashed and 1 memory_limit", h.Isolate.Outcomes)
			}
			t.Logf("limits: %v", h.Isolate.Limits)
			switch mem := h.Isolate.Limits["memory"]; {
			case cgroup == "off" && (!strings.Contains(mem, "RLIMIT_DATA") || !strings.Contains(h.Isolate.Limits["processes"], "RLIMIT_NPROC")):
				t.Errorf("--isolate-cgroup off: limits %v; want RLIMIT_DATA and RLIMIT_NPROC named", h.Isolate.Limits)
			case cgroup == "auto" && !strings.Contains(mem, "cgroup"):
				t.Logf("!!! no writable cgroup on this host: the auto subtest ran the no-cgroup path too (%s)", mem)
			case cgroup == "auto":
				// The children's limits are untouched by raise-limit: every
				// memory cgroup of this worker still says 96 MiB.
				n := 0
				for _, dir := range cgroupsOf(worker) {
					if b, err := os.ReadFile(filepath.Join(dir, "memory.limit_in_bytes")); err == nil {
						n++
						if got := strings.TrimSpace(string(b)); got != strconv.Itoa(96<<20) {
							t.Errorf("%s: memory.limit_in_bytes = %s; want %d, as configured", dir, got, 96<<20)
						}
					}
				}
				if n == 0 {
					t.Logf("no v1 memory cgroup of the worker found under the test's glob: limits not re-read")
				}
			}
			if s := c.snapshot(); s.Workers[0].PID != worker || s.Forks != 1 {
				t.Errorf("the worker changed: %+v", s)
			}
			// Only the one warm child remains.
			c.waitFor(3*time.Second, "only the warm child left", func() bool {
				kids, zombies := children(worker)
				return len(kids) == 1 && zombies == 0
			})
		})
	}
}

// status reads the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// A warm child, as the kernel sees it: another user than its root worker,
// no_new_privs, a seccomp filter, and nothing open but its three pipes.
func TestIsolateChildIsConfined(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("!!! not root: children cannot change user here; the seccomp filter is checked by the fault tests")
	}
	c := startCluster(t, nil, 1, "--workers", "1", "--isolate-warm", "1", "--allow-mode-override")
	if r := post(t, "http://"+c.addr+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Fatalf("isolated task = %d %s", r.status, r.body)
	}
	worker := c.snapshot().Workers[0].PID
	var kid int
	c.waitFor(3*time.Second, "a warm child", func() bool {
		kids, _ := children(worker)
		if len(kids) == 1 {
			kid = kids[0]
		}
		return kid != 0
	})
	// The child confines itself before it reads its first frame: wait for
	// it to block on stdin.
	c.waitFor(3*time.Second, "the child to install its filter", func() bool { return procStatus(t, kid)["Seccomp"] == "2" })
	st := procStatus(t, kid)
	if st["Uid"] != "65534 65534 65534 65534" || st["Gid"] != "65534 65534 65534 65534" || st["Groups"] != "" {
		t.Errorf("child Uid %q Gid %q Groups %q; want nobody's (65534) everywhere and no groups", st["Uid"], st["Gid"], st["Groups"])
	}
	if st["NoNewPrivs"] != "1" || st["CapEff"] != "0000000000000000" {
		t.Errorf("child NoNewPrivs %q CapEff %q; want 1 and no capabilities", st["NoNewPrivs"], st["CapEff"])
	}
	// Its descriptors: stdin, stdout, stderr and its input file, a memfd
	// open read-only (it may map it, never write it).
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", kid))
	var names []string
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", kid, e.Name()))
		names = append(names, e.Name()+"→"+l)
	}
	input, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", kid))
	if len(ents) != 4 || !strings.HasPrefix(input, "/memfd:hybrid-isolate-input") {
		t.Errorf("child descriptors %v; want only stdin, stdout, stderr and 3, its input memfd", names)
	}
	info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/3", kid))
	var flags int
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%o", &flags)
		}
	}
	if err != nil || flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		t.Errorf("child's input file flags %o (%v); want it open read-only", flags, err)
	}
}

// A launcher that leaves descriptors open (a listening socket, a 0600 file)
// passes them to the primary; neither its workers nor their isolated
// children get them.
func TestInheritedDescriptorsDoNotLeak(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lnFile, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lnFile.Close()
	secret, err := os.OpenFile(filepath.Join(t.TempDir(), "secret"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	cmd := serveCmd(binPath, "--workers", "1", "--isolate-warm", "1", "--allow-mode-override")
	cmd.ExtraFiles = []*os.File{lnFile, secret} // fd 3 and 4 in the primary
	c := startClusterCmd(t, cmd, nil, 1)
	if r := post(t, "http://"+c.addr+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Fatalf("isolated task = %d %s", r.status, r.body)
	}
	worker := c.snapshot().Workers[0].PID
	c.waitFor(3*time.Second, "a warm child", func() bool { kids, _ := children(worker); return len(kids) == 1 })
	kids, _ := children(worker)
	var stat syscall.Stat_t
	syscall.Fstat(int(lnFile.Fd()), &stat)
	sock := fmt.Sprintf("socket:[%d]", stat.Ino)
	leaked := func(pid int) []string {
		var bad []string
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, e := range ents {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			if l == sock || l == secret.Name() {
				bad = append(bad, e.Name()+"→"+l)
			}
		}
		return bad
	}
	if bad := leaked(c.cmd.Process.Pid); len(bad) != 2 {
		t.Fatalf("the primary holds %v; want both inherited descriptors (the test cannot see a leak otherwise)", bad)
	}
	for _, pid := range append([]int{worker}, kids...) {
		if bad := leaked(pid); len(bad) > 0 {
			t.Errorf("process %d holds inherited descriptors %v", pid, bad)
		}
	}
}

// --isolate-strict refuses to start a worker whose host cannot enforce
// every limit: here, a binary the children's user cannot execute.
func TestIsolateStrictRefusesAWeakHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("!!! not root: the children's user cannot differ from the worker's here")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o700)
	bin := filepath.Join(dir, "hybrid")
	b, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o700); err != nil {
		t.Fatal(err)
	}
	c := startClusterCmd(t, serveCmd(bin, "--workers", "1", "--isolate-strict"), nil, 0)
	// The worker exits with EX_CONFIG and its one line; the primary opens
	// the circuit at once (a configuration error is not retried).
	c.waitFor(20*time.Second, "the circuit to open", func() bool { return c.snapshot().Circuit == "open" })
	if s := c.snapshot(); !strings.Contains(s.CircuitReason, "cannot enforce") || !strings.Contains(s.CircuitReason, "user other than root") ||
		s.WorkersReady != 0 || s.Forks != 1 {
		t.Errorf("circuit reason %q, %d ready, %d forks; want the missing limit named, no worker, no retry",
			s.CircuitReason, s.WorkersReady, s.Forks)
	}
	// Without --isolate-strict the same host serves, and says what is missing.
	c2 := startClusterCmd(t, serveCmd(bin, "--workers", "1", "--allow-mode-override"), nil, 1)
	if r := post(t, "http://"+c2.addr+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Errorf("isolated task without --isolate-strict = %d %s", r.status, r.body)
	}
	c2.waitLog("children cannot start as their own user", 5*time.Second)
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

// A child that serves several tasks (--isolate-reuse) maps each task's
// input from the same input file: each sees exactly its own bytes, however
// long the one before it was, and an empty input is empty.
func TestIsolateReusedChildSeesOnlyItsInput(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1", "--isolate-warm", "1", "--isolate-reuse", "8",
		"--allow-mode-override")
	url := "http://" + c.addr + "/v1/hash/sha256?mode=isolate"
	worker := c.snapshot().Workers[0].PID
	for _, n := range []int{3 << 20, 70_000, 4097, 4096, 1, 0, 5000} {
		in := []byte(strings.Repeat(string(rune('a'+n%26)), n))
		r := post(t, url, in)
		sum := sha256.Sum256(in)
		if want := hex.EncodeToString(sum[:]); r.status != 200 || !strings.Contains(string(r.body), want) {
			t.Errorf("isolated sha256 of %d bytes = %d %s; want 200 with %s", n, r.status, r.body, want)
		}
		// The file a child holds is its last task's input, no longer (or
		// empty, for a spare that has not served): no byte of the task
		// before stays for it to map.
		kids, _ := children(worker)
		for _, kid := range kids {
			if fi, err := os.Stat(fmt.Sprintf("/proc/%d/fd/3", kid)); err == nil && fi.Size() != int64(n) && fi.Size() != 0 {
				t.Errorf("after a task of %d bytes, child %d's input file holds %d", n, kid, fi.Size())
			}
		}
	}
	var h struct {
		Isolate struct {
			Started uint64 `json:"children_started"`
		}
	}
	getJSON(freshClient(), "http://"+c.addr+"/health", &h)
	// 7 tasks, 8 per child, 1 warm: the first child served them all (and a
	// spare may have started since).
	if h.Isolate.Started > 2 {
		t.Errorf("%d children started for 7 tasks with --isolate-reuse 8; the test wants one child to serve them", h.Isolate.Started)
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
	fdsBefore, _ := fdsOutsideCgroups(worker)
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
	// The cgroup pool keeps a cgroup (and its ~5 open files) for each
	// child that ran at once, warm ones included, for reuse: it may have
	// grown by one since fdsBefore, but never past warm + running.
	fds, groups := fdsOutsideCgroups(worker)
	if fds > fdsBefore+4 || groups > 3 {
		t.Errorf("worker descriptors %d → %d after %d isolated tasks, and files of %d pooled cgroups (want at most 3: 2 warm + 1 running)",
			fdsBefore, fds, rounds, groups)
	}
}

// fdsOutsideCgroups counts pid's descriptors but those of its cgroup pool,
// and the distinct cgroups those name.
func fdsOutsideCgroups(pid int) (fds, groups int) {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	seen := map[string]bool{}
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if strings.HasPrefix(l, "/sys/fs/cgroup/") && strings.Contains(l, "/hybrid-isolate-") {
			seen[filepath.Base(filepath.Dir(l))] = true
			continue
		}
		fds++
	}
	return fds, len(seen)
}

// TestIsolateSoak runs 10,000 isolated tasks, crashes and timeouts included,
// and checks that no child, zombie or descriptor is left. It takes minutes,
// so it runs only with HYBRID_SOAK=1.
func TestIsolateSoak(t *testing.T) {
	if os.Getenv("HYBRID_SOAK") == "" {
		t.Skip("HYBRID_SOAK not set: the 10,000-task soak takes minutes (see bench/RESULTS.md)")
	}
	env, _ := faultFile(t)
	cgroup := os.Getenv("HYBRID_SOAK_CGROUP") // auto, or off: both paths must pass
	if cgroup == "" {
		cgroup = "auto"
	}
	c := startCluster(t, env, 1, "--workers", "1", "--isolate-timeout", "200ms", "--isolate-warm", "2",
		"--allow-mode-override", "--pool-size", "2", "--isolate-cgroup", cgroup)
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
	fdsWarm := 0
	for i := range total {
		next <- i
		if i == total/10 {
			// By now the cgroup pool holds its idle directories, each with
			// the few files it keeps open: from here the count must not grow.
			fdsWarm = fdCount(worker)
		}
	}
	close(next)
	wg.Wait()
	t.Logf("%d isolated tasks in %v: statuses %v; worker descriptors %d at start, %d after %d tasks, %d at the end",
		total, time.Since(start).Round(time.Second), statuses, fdsBefore, fdsWarm, total/10, fdCount(worker))
	want := map[int]int{200: total * 9 / 10, 500: total/10 - total/100, 504: total / 100}
	if statuses[200] != want[200] || statuses[500] != want[500] || statuses[504] != want[504] {
		t.Errorf("statuses %v; want %v", statuses, want)
	}
	c.waitFor(5*time.Second, "only the warm children, no zombies", func() bool {
		kids, zombies := children(worker)
		return len(kids) <= 2 && zombies == 0
	})
	if fds := fdCount(worker); fds > fdsWarm+4 || fds > fdsBefore+4+3*8 {
		t.Errorf("worker descriptors %d at start, %d after %d tasks, %d after %d: a leak", fdsBefore, fdsWarm, total/10, fds, total)
	}
	// The pool keeps a cgroup (a directory in each of two v1 hierarchies)
	// per warm or running child, and up to 8 idle ones.
	if n := len(cgroupsOf(worker)); n > 2*(2+2+8) {
		t.Errorf("%d of the worker's isolate cgroup directories left", n)
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

// hybrid run by a user that is not root (as in most containers): children
// run as that same user, so only the filter keeps them from their worker.
// A child that signals its worker is killed (sandbox_violation), the worker
// lives on, and /health says the user could not change.
func TestIsolateAsNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("!!! already not root: the whole suite is this test")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // the hooks file must be readable by nobody
	os.Chmod(filepath.Dir(dir), 0o755)
	hooks := filepath.Join(dir, "fault")
	if err := os.WriteFile(hooks, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := serveCmd(binPath, "--workers", "1", "--isolate-warm", "1", "--allow-mode-override")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	c := startClusterCmd(t, cmd, []string{testHooksVar + "=" + hooks}, 1)
	base := "http://" + c.addr
	worker := c.snapshot().Workers[0].PID
	if r := post(t, base+"/v1/hash/sha256?mode=isolate", []byte("abc")); r.status != 200 {
		t.Fatalf("isolated hash as nobody = %d %s", r.status, r.body)
	}
	for _, fault := range []string{"kill-parent", "read-file?path=/etc/hostname", "dial?addr=" + c.addr} {
		r := post(t, base+"/_test/isolate/"+fault, nil)
		if r.status != 422 || !strings.Contains(string(r.body), `"code":"sandbox_violation"`) {
			t.Errorf("fault %s as nobody = %d %s; want 422 sandbox_violation", fault, r.status, r.body)
		}
	}
	var h struct {
		Isolate struct {
			Limits map[string]string `json:"limits"`
		}
	}
	getJSON(freshClient(), base+"/health", &h)
	if u := h.Isolate.Limits["user"]; !strings.Contains(u, "not root") {
		t.Errorf("/health isolate user = %q; want it to say the user could not change", u)
	}
	if s := c.snapshot(); s.Workers[0].PID != worker || s.Forks != 1 || syscall.Kill(worker, 0) != nil {
		t.Errorf("the worker changed or died: %+v", s)
	}
}
