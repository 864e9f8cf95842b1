package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
)

// The dashboard at the admin address, in headless Chromium driven over the
// DevTools protocol: it lists the cluster's workers, shows req/s above zero
// under load and figures that move between two looks, draws its charts,
// and logs no console error, exception or CSP violation.
func TestDashboardInChromium(t *testing.T) {
	c := startCluster(t, nil, 2, "--workers", "2", "--allow-mode-override")
	b := startBrowser(t)
	b.navigate("http://" + c.admin + "/")
	// One isolated task, for the isolate outcomes the page shows.
	if r := post(t, "http://"+c.addr+"/v1/hash/sha256?mode=isolate", []byte("x")); r.status != 200 {
		t.Fatalf("a hash in an isolated child: %d %s", r.status, r.body)
	}

	var idle dashState
	b.waitState(20*time.Second, "the workers table to list the ready workers", &idle, func(s dashState) bool {
		for pid := range c.readyPIDs() {
			if !slices.Contains(s.PIDs, pid) {
				return false
			}
		}
		return s.Polls > 0
	})
	if idle.Circuit != "closed" {
		t.Errorf("the circuit card reads %q; want closed", idle.Circuit)
	}

	body := bytes.Repeat([]byte("hybrid!\n"), 128)
	l := startKeepAlive(c.addr, 8, []rawRequest{getRequest("/health"), postRequest("/v1/hash/sha256", body)})
	var first, second dashState
	b.waitState(20*time.Second, "req/s above 0 under load", &first, func(s dashState) bool { return s.RPS > 0 })
	time.Sleep(3 * time.Second)
	b.waitState(10*time.Second, "the figures to move under load", &second, func(s dashState) bool {
		return s.Polls > first.Polls+1 && s.Requests > first.Requests
	})
	shot := b.screenshot()
	var outcome dashState
	okOutcome := regexp.MustCompile(`outcome: ok([0-9]+)`)
	b.waitState(15*time.Second, "the isolate section to show outcome ok", &outcome, func(s dashState) bool {
		m := okOutcome.FindStringSubmatch(s.Isolate)
		return m != nil && m[1] != "0"
	})
	r := l.stop()
	var after dashState
	b.waitState(15*time.Second, "req/s to fall once the load stops", &after, func(s dashState) bool { return s.RPS < second.RPS/10 })
	t.Logf("page after the load: %+v", after)
	t.Logf("load: %v", r)
	t.Logf("page idle: %+v", idle)
	t.Logf("page under load: %+v, then %+v", first, second)
	if second.RPS <= 0 || second.RSS == "" || second.RSS == "–" {
		t.Errorf("under load the page reads %+v; want req/s above 0 and an RSS", second)
	}
	// The pool and isolate figures come from /metrics, where served.
	status, _ := getJSON(adminClient, "http://"+c.admin+"/metrics", nil)
	for _, what := range []string{second.Pool, second.Isolate} {
		if na := strings.HasPrefix(what, "n/a"); na != (status == http.StatusNotFound) || na && !strings.Contains(what, "serves no /metrics") {
			t.Errorf("GET /metrics = %d, and the page's pool/isolate section reads %q", status, what)
		}
	}
	if second.Points < 3 || second.Points <= first.Points {
		t.Errorf("the req/s chart has %d points, then %d; want a growing line", first.Points, second.Points)
	}

	path := filepath.Join(t.TempDir(), "dashboard.png")
	if keep := os.Getenv("HYBRID_DASHBOARD_SCREENSHOT"); keep != "" {
		path = keep
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	// The req/s line (#1f77b4) and the RSS line (#8e44ad) are drawn.
	lines := map[string]int{}
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y++ {
		for x := bnd.Min.X; x < bnd.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			switch {
			case near(r>>8, 0x1f) && near(g>>8, 0x77) && near(b>>8, 0xb4):
				lines["req/s"]++
			case near(r>>8, 0x8e) && near(g>>8, 0x44) && near(b>>8, 0xad):
				lines["rss"]++
			}
		}
	}
	t.Logf("screenshot %s: %dx%d, chart pixels %v", path, bnd.Dx(), bnd.Dy(), lines)
	if bnd.Dx() < 1000 || lines["req/s"] < 20 || lines["rss"] < 20 {
		t.Errorf("screenshot %s (%dx%d): chart pixels %v; want both lines drawn", path, bnd.Dx(), bnd.Dy(), lines)
	}
	b.checkConsole()
}

// With --admin-token the page asks for the token, and with it shows the
// workers: the token goes in a form, never in the page.
func TestDashboardTokenInChromium(t *testing.T) {
	// The harness's /cluster polls have no token: wait for the log line.
	c := startCluster(t, nil, 0, "--workers", "1", "--admin-token", "dash-s3cret")
	c.waitLog("worker ready", 15*time.Second)
	b := startBrowser(t)
	b.navigate("http://" + c.admin + "/")
	var s dashState
	b.waitState(20*time.Second, "the token form", &s, func(s dashState) bool { return s.Login })
	b.eval(`(() => { document.getElementById("token").value = "dash-s3cret"; document.getElementById("login").requestSubmit(); return true })()`)
	b.waitState(20*time.Second, "the workers after the token", &s, func(s dashState) bool { return !s.Login && len(s.PIDs) > 0 })
	if b.eval(`document.documentElement.outerHTML.includes("dash-s3cret")`) != "false" {
		t.Error("the token shows in the page's DOM")
	}
	if got := b.eval(`sessionStorage.getItem("hybrid-admin-token")`); got != "dash-s3cret" {
		t.Errorf("sessionStorage holds %q; want the token", got)
	}
	// The only console lines allowed: the 401s that made the page ask.
	b.checkConsole("/cluster", "401")
}

// dashState is what the page shows, read from its DOM.
type dashState struct {
	Polls    int     `json:"polls"`
	PIDs     []int   `json:"pids"`
	Requests int64   `json:"requests"` // the workers table's column, summed
	RPS      float64 `json:"rps"`
	RSS      string  `json:"rss"`
	Points   int     `json:"points"` // in the req/s chart
	Circuit  string  `json:"circuit"`
	Pool     string  `json:"pool"`
	Isolate  string  `json:"isolate"`
	Login    bool    `json:"login"`
	Status   string  `json:"status"`
}

const dashStateJS = `(() => {
	if (typeof hist === "undefined" || document.readyState !== "complete") return "{}";
	const q = (s) => document.querySelector(s);
	const rows = [...document.querySelectorAll("#workers tr")];
	const line = q("#rps-chart polyline");
	return JSON.stringify({
		polls: hist.length,
		pids: rows.map((r) => Number(r.dataset.pid)),
		requests: rows.reduce((n, r) => n + Number(r.cells[6].textContent), 0),
		rps: parseFloat(q("#rps").textContent) || 0,
		rss: q("#rss").textContent,
		points: line ? line.getAttribute("points").split(" ").filter(Boolean).length : 0,
		circuit: q("#cards .card b") ? q("#cards .card b").textContent : "",
		pool: q("#pool").textContent, isolate: q("#isolate").textContent,
		login: !q("#login").hidden, status: q("#status").textContent,
	});
})()`

// browser is headless Chromium with one page, driven over the DevTools
// protocol on a pipe (--remote-debugging-pipe: JSON messages ended by a NUL
// byte, ours on its fd 3, its on fd 4). It records every console error and
// warning, uncaught exception and error log entry (CSP violations, failed
// loads) of the page.
type browser struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       *os.File
	session string
	exited  chan struct{}

	mu       sync.Mutex
	next     int
	replies  map[int]chan cdpMessage
	problems []string
	logs     bytes.Buffer
}

type cdpMessage struct {
	ID     int             `json:"id,omitempty"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
	SessionID string `json:"sessionId,omitempty"`
}

// startBrowser starts Chromium with a blank page attached, or skips loudly
// where there is none.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("SKIPPED LOUDLY: chromium is not installed (.ci/run installs Debian's chromium); the dashboard was not opened in a browser")
	}
	ourR, ourW, err := os.Pipe() // we write, it reads (its fd 3)
	if err != nil {
		t.Fatal(err)
	}
	itsR, itsW, err := os.Pipe() // it writes (its fd 4), we read
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{t: t, w: ourW, replies: map[int]chan cdpMessage{}, exited: make(chan struct{})}
	b.cmd = exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-background-timer-throttling", "--disable-renderer-backgrounding",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-pipe", "--window-size=1280,900", "about:blank")
	b.cmd.ExtraFiles = []*os.File{ourR, itsW}
	b.cmd.Stdout, b.cmd.Stderr = &lockedWriter{b: b}, &lockedWriter{b: b}
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ourR.Close()
	itsW.Close()
	go b.read(bufio.NewReader(itsR))
	go func() { b.cmd.Wait(); close(b.exited) }()
	t.Cleanup(b.close)

	var target struct{ TargetID string }
	b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct{ SessionID string }
	b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	for _, m := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		b.call(b.session, m, nil, nil)
	}
	b.call(b.session, "Emulation.setDeviceMetricsOverride", map[string]any{"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}, nil)
	return b
}

type lockedWriter struct{ b *browser }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.b.mu.Lock()
	defer w.b.mu.Unlock()
	return w.b.logs.Write(p)
}

func (b *browser) read(r *bufio.Reader) {
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(raw[:len(raw)-1], &m) != nil {
			continue
		}
		b.mu.Lock()
		if ch := b.replies[m.ID]; m.ID != 0 && ch != nil {
			delete(b.replies, m.ID)
			ch <- m
		} else if p := problem(m); p != "" {
			b.problems = append(b.problems, p)
		}
		b.mu.Unlock()
	}
}

// problem describes an event that a clean page does not cause, or is "".
func problem(m cdpMessage) string {
	switch m.Method {
	case "Runtime.exceptionThrown":
		return "exception: " + string(m.Params)
	case "Runtime.consoleAPICalled":
		var p struct{ Type string }
		json.Unmarshal(m.Params, &p)
		if p.Type == "error" || p.Type == "warning" || p.Type == "assert" {
			return "console." + p.Type + ": " + string(m.Params)
		}
	case "Log.entryAdded":
		var p struct {
			Entry struct{ Level, Source, Text, URL string }
		}
		json.Unmarshal(m.Params, &p)
		if p.Entry.Level == "error" || p.Entry.Level == "warning" {
			return fmt.Sprintf("log %s %s: %s (%s)", p.Entry.Level, p.Entry.Source, p.Entry.Text, p.Entry.URL)
		}
	}
	return ""
}

// call sends method to the browser (session "") or the page and decodes
// its result into v.
func (b *browser) call(session, method string, params any, v any) {
	b.t.Helper()
	b.mu.Lock()
	b.next++
	id := b.next
	ch := make(chan cdpMessage, 1)
	b.replies[id] = ch
	b.mu.Unlock()
	msg, _ := json.Marshal(map[string]any{"id": id, "method": method, "params": params, "sessionId": session})
	if session == "" {
		msg, _ = json.Marshal(map[string]any{"id": id, "method": method, "params": params})
	}
	if _, err := b.w.Write(append(msg, 0)); err != nil {
		b.t.Fatalf("chromium: %s: %v\n%s", method, err, b.stderr())
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			b.t.Fatalf("chromium: %s: %s", method, m.Error.Message)
		}
		if v != nil {
			if err := json.Unmarshal(m.Result, v); err != nil {
				b.t.Fatalf("chromium: %s: %v: %s", method, err, m.Result)
			}
		}
	case <-b.exited:
		b.t.Fatalf("chromium exited during %s:\n%s", method, b.stderr())
	case <-time.After(30 * time.Second):
		b.t.Fatalf("chromium: no answer to %s in 30s\n%s", method, b.stderr())
	}
}

func (b *browser) navigate(url string) {
	b.t.Helper()
	var nav struct{ ErrorText string }
	b.call(b.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		b.t.Fatalf("chromium: navigate %s: %s", url, nav.ErrorText)
	}
}

// eval evaluates expr in the page and returns its value, a string.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails json.RawMessage `json:"exceptionDetails"`
	}
	b.call(b.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res)
	if res.ExceptionDetails != nil {
		b.t.Fatalf("evaluating %s: %s", expr, res.ExceptionDetails)
	}
	return fmt.Sprint(res.Result.Value)
}

// waitState reads the page every 200 ms into s until cond holds.
func (b *browser) waitState(timeout time.Duration, what string, s *dashState, cond func(dashState) bool) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		*s = dashState{}
		if err := json.Unmarshal([]byte(b.eval(dashStateJS)), s); err != nil {
			b.t.Fatalf("page state: %v", err)
		}
		if cond(*s) {
			return
		}
		if time.Now().After(deadline) {
			b.checkConsole()
			b.t.Fatalf("timed out after %v waiting for %s; the page shows %+v", timeout, what, *s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// screenshot returns the page as a PNG.
func (b *browser) screenshot() []byte {
	b.t.Helper()
	var shot struct{ Data string }
	b.call(b.session, "Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &shot)
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		b.t.Fatal(err)
	}
	return png
}

// checkConsole fails the test for every problem the page caused but the
// failed load of a /metrics the primary does not serve, and those that
// hold every string of allow (a failed load the test expects).
func (b *browser) checkConsole(allow ...string) {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		holds := func(s string) bool { return strings.Contains(p, s) }
		if holds("404") && holds("/metrics") || len(allow) > 0 && !slices.ContainsFunc(allow, func(s string) bool { return !holds(s) }) {
			continue
		}
		b.t.Errorf("dashboard: %s", p)
	}
}

func (b *browser) stderr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.logs.String()
}

// close asks Chromium to exit, and kills it, by pid, if it does not.
func (b *browser) close() {
	msg, _ := json.Marshal(map[string]any{"id": 1 << 30, "method": "Browser.close"})
	b.w.Write(append(msg, 0))
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
	}
	b.w.Close()
}

// markupCluster is a cluster whose figures are markup, with a request
// counter that grows on every look.
type markupCluster struct {
	mu   sync.Mutex
	reqs uint64
}

const markup = `<img src=x onerror="console.error('injected')">`

func (h *markupCluster) Snapshot() procpool.Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs += 100
	conns := int32(3)
	return procpool.Snapshot{PrimaryPID: 1, Version: markup, Addr: markup, ListenMode: markup,
		Circuit: "open", CircuitReason: markup, WorkersWanted: 1, WorkersReady: 1, WorkersMax: 4,
		Workers: []procpool.WorkerInfo{{ID: 1, PID: 4242, State: markup, StartedAt: time.Now(), RSS: 50 << 20,
			Requests: h.reqs, Version: markup, Conns: &conns}}}
}

func (*markupCluster) Reload() error                 { return nil }
func (*markupCluster) Upgrade(context.Context) error { return nil }
func (*markupCluster) Scale(int) error               { return nil }
func (*markupCluster) SetPoolSize(int) error         { return nil }

// The page inserts what /cluster says as text: markup in every string
// field shows as itself and runs nothing. Without /metrics (an admin
// built without it) the pool and isolate figures say n/a. Hidden, the page
// stops polling; visible again, it resumes.
func TestDashboardEscapesInChromium(t *testing.T) {
	ln, err := server.ListenAdmin("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := server.NewAdmin(&markupCluster{}, slog.New(slog.DiscardHandler))
	go a.Serve(ln)
	t.Cleanup(func() { a.Shutdown(context.Background()) })
	b := startBrowser(t)
	b.navigate("http://" + ln.Addr().String() + "/")
	var s dashState
	b.waitState(20*time.Second, "req/s from the fake cluster and the pool's n/a", &s, func(s dashState) bool {
		return s.RPS > 0 && strings.HasPrefix(s.Pool, "n/a")
	})
	if !strings.Contains(s.Pool, "serves no /metrics") || !strings.Contains(s.Isolate, "serves no /metrics") {
		t.Errorf("without /metrics the page reads %q and %q; want n/a saying why", s.Pool, s.Isolate)
	}
	if s.Circuit != "open" {
		t.Errorf("circuit card %q; want open", s.Circuit)
	}
	if n := b.eval(`document.querySelectorAll("img, [onerror]").length`); n != "0" {
		t.Errorf("the page holds %s elements made from /cluster's markup; want 0", n)
	}
	if got := b.eval(`document.querySelector("#workers tr").cells[2].textContent`); got != markup {
		t.Errorf("the state cell reads %q; want the markup as text, %q", got, markup)
	}

	// Hidden: no poll for 3 s. Visible: polls again.
	hide := func(state string) {
		b.eval(`Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "` + state + `"});
			document.dispatchEvent(new Event("visibilitychange")); true`)
	}
	hide("hidden")
	time.Sleep(1500 * time.Millisecond) // a poll under way when hidden ends
	var before, after dashState
	b.waitState(time.Second, "the page state", &before, func(dashState) bool { return true })
	time.Sleep(3 * time.Second)
	b.waitState(time.Second, "the page state", &after, func(dashState) bool { return true })
	if after.Polls != before.Polls {
		t.Errorf("hidden, the page polled %d times in 3s; want none", after.Polls-before.Polls)
	}
	hide("visible")
	b.waitState(5*time.Second, "polls to resume once visible", &after, func(s dashState) bool { return s.Polls > before.Polls })
	b.checkConsole()
}
