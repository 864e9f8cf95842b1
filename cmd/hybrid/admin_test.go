package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hybrid-server/hybrid/server"
)

// adminPost sends POST path to the admin at addr with the given headers
// (name, value, …) and returns the status.
func adminPost(t *testing.T, addr, path, contentType, body string, headers ...string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A web page can make a browser POST a form to the loopback admin. It is
// refused, and no reload happens; the hybrid client's header is accepted.
func TestAdminRefusesBrowserForm(t *testing.T) {
	c := startCluster(t, nil, 1, "--workers", "1")
	if s := adminPost(t, c.admin, "/reload", "application/x-www-form-urlencoded", "a=1", "Origin", "http://evil.example"); s != 403 {
		t.Errorf("browser form POST /reload = %d; want 403", s)
	}
	if s := adminPost(t, c.admin, "/scale", "text/plain", `{"workers":3}`, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"); s != 403 {
		t.Errorf("browser text/plain POST /scale = %d; want 403", s)
	}
	time.Sleep(300 * time.Millisecond)
	if r := c.logs.find("rolling reload started"); len(r) > 0 || c.snapshot().WorkersWanted != 1 {
		t.Fatalf("a refused call changed the cluster: %v, %+v", r, c.snapshot())
	}
	if s := adminPost(t, c.admin, "/reload", "", "", server.AdminHeader, "1"); s != 202 {
		t.Errorf("POST /reload with %s: 1 = %d; want 202", server.AdminHeader, s)
	}
	c.waitLog("rolling reload started", 5*time.Second)
}

// An admin address not on loopback without a token: serve refuses to
// start, in one line, exit 2. With one: the token is wanted, and checked.
func TestAdminNonLoopbackNeedsToken(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, "serve", "--addr", "127.0.0.1:0", "--admin-addr", "0.0.0.0:0", "--workers", "1")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), "--admin-token") {
		t.Errorf("serve --admin-addr 0.0.0.0:0: exit %d (%v), %q; want 2 and one line naming --admin-token", code, err, out)
	}
	// A token HTTP would strip can never match: refused at start, unnamed.
	cmd = exec.CommandContext(ctx, binPath, "serve", "--addr", "127.0.0.1:0", "--admin-token", " tok en ", "--workers", "1")
	cmd.WaitDelay = 5 * time.Second
	out, err = cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), "whitespace") || strings.Contains(string(out), "tok en") {
		t.Errorf("serve --admin-token ' tok en ': exit %d (%v), %q; want 2 and one line, without the token", code, err, out)
	}

	c := startClusterCmd(t, serveCmd(binPath, "--workers", "1", "--admin-addr", "0.0.0.0:0"), []string{"HYBRID_ADMIN_TOKEN=s3cret"}, 0)
	_, port, _ := net.SplitHostPort(c.admin)
	c.admin = "127.0.0.1:" + port
	if status, _ := getJSON(adminClient, "http://"+c.admin+"/cluster", nil); status != 401 {
		t.Errorf("GET /cluster without the token = %d; want 401", status)
	}
	if _, errOut, code := runHybrid(t, nil, "status", "--admin-addr", c.admin); code != 1 || !strings.Contains(errOut, "wants its admin token") {
		t.Errorf("hybrid status without the token: exit %d, %q; want 1, asking for the token", code, errOut)
	}
	if _, errOut, code := runHybrid(t, []string{"HYBRID_ADMIN_TOKEN=wrong"}, "status", "--admin-addr", c.admin); code != 1 || !strings.Contains(errOut, "refused the admin token") {
		t.Errorf("hybrid status with a wrong token: exit %d, %q; want 1", code, errOut)
	}
	if out, errOut, code := runHybrid(t, []string{"HYBRID_ADMIN_TOKEN=s3cret"}, "status", "--admin-addr", c.admin); code != 0 || !strings.HasPrefix(out, "primary ") {
		t.Errorf("hybrid status with the token: exit %d, %q %q; want 0", code, out, errOut)
	}
	if _, errOut, code := runHybrid(t, nil, "reload", "--admin-token", "s3cret", "--admin-addr", c.admin); code != 0 {
		t.Errorf("hybrid reload --admin-token: exit %d, %q; want 0", code, errOut)
	}
	// Any case of the scheme (RFC 9110).
	req, _ := http.NewRequest(http.MethodGet, "http://"+c.admin+"/cluster", nil)
	req.Header.Set("Authorization", "bearer s3cret")
	if resp, err := adminClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("GET /cluster with Authorization: bearer (lower case) = %v, %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}

// --admin-addr unix:/path: a 0600 socket that hybrid status speaks to,
// removed when the primary exits.
func TestAdminUnixSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "hybrid-admin-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "admin.sock")
	c := startClusterCmd(t, serveCmd(binPath, "--workers", "1", "--admin-addr", "unix:"+sock), nil, 0)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("admin socket: %v, %v; want a socket of mode 0600", fi.Mode(), err)
	}
	var out, errOut string
	var code int
	c.waitFor(15*time.Second, "hybrid status to show a ready worker", func() bool {
		out, errOut, code = runHybrid(t, []string{"HYBRID_ADMIN_ADDR=unix:" + sock}, "status")
		return code == 0 && strings.Contains(out, "  ready  ")
	})
	if errOut != "" {
		t.Errorf("hybrid status over the socket: stderr %q", errOut)
	}
	c.signal(syscall.SIGTERM)
	if code := c.wait(15 * time.Second); code != 0 {
		t.Errorf("primary exit %d; want 0", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("admin socket after exit: %v; want it removed", err)
	}
}
