package cache

import "testing"

// TestErrorStrings pins the exported errors' texts: logs and dashboards
// match on them.
func TestErrorStrings(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{ErrTooLarge, "cache: value over MaxEntry"},
		{ErrFull, "cache: no room: values in flight hold the byte bound"},
		{ErrProtocol, "cache: protocol error"},
		{ErrClosed, "cache: client closed"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("error %q; want %q", got, tc.want)
		}
	}
}
