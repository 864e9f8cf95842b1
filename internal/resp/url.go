package resp

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// urlForm is how a URL is written, for the errors.
const urlForm = "want redis://[user:password@]host:port/db or rediss://…"

// ParseURL reads redis://[user:password@]host[:port][/db] (rediss:// for
// TLS, verified against host). The port defaults to 6379 and db to 0; the
// user and password may be percent-encoded, and must be when they hold
// ':' (the user) or '%'. Timeouts and sizes are left zero: New's defaults.
//
// An error names the part that is wrong and never echoes the URL, which
// may hold a password.
func ParseURL(s string) (Options, error) {
	var o Options
	bad := func(what string) (Options, error) {
		return Options{}, errors.New("resp: url: " + what + "; " + urlForm)
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return bad("no scheme")
	}
	switch scheme {
	case "redis":
	case "rediss":
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	default:
		return bad("the scheme is not redis or rediss")
	}
	// The user information ends at the last '@': host, port and db never
	// hold one, and a password may (or '/', '?', '#') unencoded.
	if i := strings.LastIndexByte(rest, '@'); i >= 0 {
		user, pass, hasPass := strings.Cut(rest[:i], ":")
		rest = rest[i+1:]
		var err1, err2 error
		o.Username, err1 = url.PathUnescape(user)
		o.Password, err2 = url.PathUnescape(pass)
		switch {
		case err1 != nil || err2 != nil:
			return bad("the user or password has a '%' that is no escape (write % as %25)")
		case !hasPass && user != "":
			return bad("a user without a password (write redis://:password@host for a password alone)")
		case hasPass && pass == "":
			return bad("an empty password")
		}
	}
	hostport, path, _ := strings.Cut(rest, "/")
	if strings.ContainsAny(hostport, "?#") || strings.ContainsAny(path, "?#") {
		return bad("options (?…) and fragments (#…) are not supported")
	}
	host, port := hostport, "6379"
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return bad("an IPv6 host without its ']'")
		}
		host, hostport = hostport[1:end], hostport[end+1:]
		if hostport != "" {
			p, ok := strings.CutPrefix(hostport, ":")
			if !ok {
				return bad("something other than :port after the IPv6 host")
			}
			port = p
		}
	} else if i := strings.IndexByte(hostport, ':'); i >= 0 {
		host, port = hostport[:i], hostport[i+1:]
		if strings.IndexByte(port, ':') >= 0 {
			return bad("more than one ':' in host:port (put an IPv6 host in brackets)")
		}
	}
	if host == "" {
		return bad("the host is empty")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port[0] == '+' {
		return bad("the port is not a number from 1 to 65535")
	}
	if path != "" {
		n, err := strconv.Atoi(path)
		if err != nil || n < 0 || path[0] == '+' {
			return bad("the db is not a number from 0")
		}
		o.DB = n
	}
	o.Addr = net.JoinHostPort(host, port)
	if o.TLS != nil {
		o.TLS.ServerName = host
	}
	return o, nil
}
