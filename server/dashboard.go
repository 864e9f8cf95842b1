//go:build linux

package server

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"

	"github.com/valyala/fasthttp"
)

// dashboardHTML is the live dashboard at the admin address's GET /: one
// page, its CSS and script inline, that polls GET /cluster (and GET
// /metrics where the primary serves it) with same-origin fetches and draws
// the cluster. It loads nothing from anywhere else.
//
//go:embed dashboard.html
var dashboardHTML []byte

// dashboardCSP lets the page run its own inline script and style, named by
// their hashes, fetch from the admin address alone, and do nothing else: no
// other script, frame, form target, base URL or image but the empty
// favicon. An injected <script> or style attribute would not run.
var dashboardCSP = "default-src 'none'; " +
	"script-src " + inlineHash(dashboardHTML, "<script>", "</script>") + "; " +
	"style-src " + inlineHash(dashboardHTML, "<style>", "</style>") + "; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source ('sha256-…') of the text between the first
// open and the close after it in page; it panics if there is none, which
// the embedded page's tests would show at once.
func inlineHash(page []byte, open, close string) string {
	_, rest, ok := bytes.Cut(page, []byte(open))
	body, _, ok2 := bytes.Cut(rest, []byte(close))
	if !ok || !ok2 {
		panic("server: dashboard.html has no " + open + close)
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// dashboard serves the page. It holds no secret and no figure: it is
// served under the Host check without a token, and to anyone with one (a
// browser cannot put a bearer token on a navigation). With a token, the
// page asks for it, keeps it in the tab's sessionStorage, and sends it as
// Authorization on its own fetches, which get the figures.
func (a *Admin) dashboard(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(dashboardHTML)
}
