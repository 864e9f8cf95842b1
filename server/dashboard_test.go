//go:build linux

package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// GET / is the dashboard, with the headers that keep it to itself.
func TestDashboardServed(t *testing.T) {
	_, addr := startAdmin(t, "127.0.0.1:0")
	for _, method := range []string{"GET", "HEAD"} {
		req, _ := http.NewRequest(method, "http://"+addr.String()+"/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s / = %d; want 200", method, resp.StatusCode)
		}
		for k, want := range map[string]string{
			"Content-Type":            "text/html; charset=utf-8",
			"Cache-Control":           "no-store",
			"X-Frame-Options":         "DENY",
			"X-Content-Type-Options":  "nosniff",
			"Content-Security-Policy": dashboardCSP,
		} {
			if got := resp.Header.Get(k); got != want {
				t.Errorf("%s / %s = %q; want %q", method, k, got, want)
			}
		}
		if method == "GET" && !bytes.Equal(body, dashboardHTML) {
			t.Errorf("GET / served %d bytes; want the %d of dashboard.html", len(body), len(dashboardHTML))
		}
	}
}

// The policy allows exactly the page's one script and one style, by hash,
// and fetches to the admin address only.
func TestDashboardCSP(t *testing.T) {
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"} {
		if !strings.Contains(dashboardCSP, want) {
			t.Errorf("CSP %q lacks %q", dashboardCSP, want)
		}
	}
	if strings.Contains(dashboardCSP, "unsafe") {
		t.Errorf("CSP %q allows something unsafe", dashboardCSP)
	}
	for _, tag := range []string{"script", "style"} {
		blocks := regexp.MustCompile(`(?s)<`+tag+`[^>]*>(.*?)</`+tag+`>`).FindAllSubmatch(dashboardHTML, -1)
		if len(blocks) != 1 {
			t.Fatalf("dashboard.html has %d <%s> elements; want 1 (the CSP names one by its hash)", len(blocks), tag)
		}
		sum := sha256.Sum256(blocks[0][1])
		if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(dashboardCSP, tag+"-src "+h) {
			t.Errorf("CSP %q does not allow the page's <%s> (%s)", dashboardCSP, tag, h)
		}
	}
}

// The page is small, loads nothing from elsewhere, and inserts what it
// reads as text, never as HTML.
func TestDashboardSelfContained(t *testing.T) {
	page := string(dashboardHTML)
	if len(page) > 32<<10 {
		t.Errorf("dashboard.html is %d bytes; want it under 32 KiB", len(page))
	}
	// The SVG namespace is a name, not a fetch.
	rest := strings.ReplaceAll(page, `"http://www.w3.org/2000/svg"`, "")
	for _, bad := range []string{"http:", "https:", "//cdn", " src=", "@import", "url(",
		"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", " on"} {
		if bad == " on" {
			// Inline handlers (onclick=…) would need 'unsafe-inline'.
			if m := regexp.MustCompile(`<[^>]*\son[a-z]+=`).FindString(rest); m != "" {
				t.Errorf("dashboard.html has an inline event handler: %s", m)
			}
			continue
		}
		if strings.Contains(rest, bad) {
			t.Errorf("dashboard.html holds %q; want a page that loads nothing and inserts text only", bad)
		}
	}
	for _, path := range regexp.MustCompile(`get\("([^"]*)"\)`).FindAllStringSubmatch(page, -1) {
		if !strings.HasPrefix(path[1], "/") || strings.HasPrefix(path[1], "//") {
			t.Errorf("the page fetches %q; want a same-origin path", path[1])
		}
	}
}

// Without a token, the page is under the Host check like every GET; with
// one, the page (which holds no figure and no secret) is served to anyone,
// and the figures it fetches want the token.
func TestDashboardAccess(t *testing.T) {
	_, open := startAdmin(t, "127.0.0.1:0")
	if r := call(t, http.DefaultClient, open.String(), "GET", "/", "", "Host", "evil.example:8081"); r.status != 403 {
		t.Errorf("GET / with Host evil.example = %d; want 403 (DNS rebinding)", r.status)
	}
	if r := call(t, http.DefaultClient, open.String(), "POST", "/", ""); r.status != 405 {
		t.Errorf("POST / = %d; want 405", r.status)
	}
	_, tokened := startAdmin(t, "127.0.0.1:0", WithToken("s3cret"))
	if r := call(t, http.DefaultClient, tokened.String(), "GET", "/", "", "Host", "admin.example:8081"); r.status != 200 {
		t.Errorf("GET / without the token = %d; want 200: a browser cannot send it on a navigation", r.status)
	}
	if r := call(t, http.DefaultClient, tokened.String(), "GET", "/cluster", ""); r.status != 401 {
		t.Errorf("GET /cluster without the token = %d; want 401", r.status)
	}
	if strings.Contains(string(dashboardHTML), "s3cret") {
		t.Error("the page holds the token")
	}
}
