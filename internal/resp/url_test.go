package resp

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want Options
		tls  string // the ServerName, for rediss
	}{
		{url: "redis://h", want: Options{Addr: "h:6379"}},
		{url: "redis://h:1/", want: Options{Addr: "h:1"}},
		{url: "redis://10.0.0.1:6380/3", want: Options{Addr: "10.0.0.1:6380", DB: 3}},
		{url: "redis://[::1]:7000/2", want: Options{Addr: "[::1]:7000", DB: 2}},
		{url: "redis://[::1]", want: Options{Addr: "[::1]:6379"}},
		{url: "redis://:s3cret@h:6379/0", want: Options{Addr: "h:6379", Password: "s3cret"}},
		{url: "redis://alice:s3cret@h/1", want: Options{Addr: "h:6379", Username: "alice", Password: "s3cret", DB: 1}},
		{url: "redis://:p%40ss%3Aw%25rd@h", want: Options{Addr: "h:6379", Password: "p@ss:w%rd"}},
		// Unencoded '@', '/', '?' and '#' in a password: the last '@' ends it.
		{url: "redis://:a@b/c?d#e@h:1/2", want: Options{Addr: "h:1", Password: "a@b/c?d#e", DB: 2}},
		{url: "rediss://:pw@cache.example.com:6380/0", want: Options{Addr: "cache.example.com:6380", Password: "pw"}, tls: "cache.example.com"},
	} {
		got, err := ParseURL(tc.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if (got.TLS != nil) != (tc.tls != "") || (got.TLS != nil && got.TLS.ServerName != tc.tls) {
			t.Errorf("ParseURL(%q).TLS = %+v; want ServerName %q", tc.url, got.TLS, tc.tls)
		}
		got.TLS = nil
		if got != tc.want {
			t.Errorf("ParseURL(%q) = %+v; want %+v", tc.url, got, tc.want)
		}
	}
}

// TestParseURLErrors: each error names the part that is wrong, and none
// holds the password (nor any piece of it).
func TestParseURLErrors(t *testing.T) {
	const pw = "Zq9xPw"
	for _, tc := range []struct{ url, part string }{
		{pw + "@h:6379", "no scheme"},
		{"http://:" + pw + "@h", "scheme"},
		{"redis://:" + pw + "@", "host is empty"},
		{"redis://:" + pw + "@:6379", "host is empty"},
		{"redis://:" + pw + "@h:", "port"},
		{"redis://:" + pw + "@h:0", "port"},
		{"redis://:" + pw + "@h:65536", "port"},
		{"redis://:" + pw + "@h:+1", "port"},
		{"redis://:" + pw + "@h:" + pw, "port"},
		{"redis://:" + pw + "@h:1:2", "more than one ':'"},
		{"redis://:" + pw + "@::1", "more than one ':'"},
		{"redis://:" + pw + "@[::1", "']'"},
		{"redis://:" + pw + "@[::1]x", ":port"},
		{"redis://:" + pw + "@h/x", "db"},
		{"redis://:" + pw + "@h/-1", "db"},
		{"redis://:" + pw + "@h/0/1", "db"},
		{"redis://:" + pw + "@h/0?dial_timeout=1s", "options"},
		{"redis://:" + pw + "%zz@h", "'%'"},
		{"redis://" + pw + "@h", "a user without a password"},
		{"redis://alice:@h", "empty password"},
		// A password with an unencoded ':' in the user part is mis-split
		// only into user and password; still no echo.
		{"redis://" + pw + ":" + pw + "@h:" + pw[:3], "port"},
	} {
		_, err := ParseURL(tc.url)
		if err == nil {
			t.Errorf("ParseURL(%q): no error; want one about %s", tc.url, tc.part)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.part) {
			t.Errorf("ParseURL(%q) = %q; want it to name %q", tc.url, msg, tc.part)
		}
		for i := 0; i+3 <= len(pw); i++ {
			if strings.Contains(msg, pw[i:i+3]) {
				t.Errorf("ParseURL(%q) = %q: holds a piece of the password", tc.url, msg)
				break
			}
		}
	}
}
