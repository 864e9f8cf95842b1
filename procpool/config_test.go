package procpool

import (
	"strings"
	"testing"
	"time"
)

// A zero duration is the default, to Validate as to New; a negative one is
// refused, and the relations hold between the values that will apply.
func TestConfigValidateDurations(t *testing.T) {
	base := func() Config { return Config{ListenMode: ListenShared, AcceptBalance: BalanceConns, Workers: 2} }
	if err := base().Validate(); err != nil {
		t.Errorf("Validate() of zero durations = %v; want nil (each stands for its default)", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v; want nil", err)
	}
	for _, tc := range []struct {
		name string
		set  func(*Config)
		want string
	}{
		{"start timeout", func(c *Config) { c.StartTimeout = -time.Second }, "start timeout -1s"},
		{"crash window", func(c *Config) { c.CrashWindow = -1 }, "crash window"},
		{"heartbeat interval", func(c *Config) { c.HeartbeatInterval = -time.Second }, "heartbeat interval -1s"},
		{"quit grace", func(c *Config) { c.QuitGrace = -time.Second }, "quit grace"},
		{"max crashes", func(c *Config) { c.MaxCrashes = -1 }, "max crashes -1"},
		// The default cap is 30s: a first delay of 1m alone exceeds it.
		{"backoff over default max", func(c *Config) { c.RestartBackoff = time.Minute }, "exceeds its max 30s"},
		// The default interval is 1s: a timeout of 1s alone is too short.
		{"timeout under default interval", func(c *Config) { c.HeartbeatTimeout = time.Second }, "twice the heartbeat interval 1s"},
		{"interval over default timeout", func(c *Config) { c.HeartbeatInterval = 6 * time.Second }, "heartbeat timeout 10s"},
	} {
		c := base()
		tc.set(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v; want it to mention %q", tc.name, err, tc.want)
		}
	}
}

// New fills zero fields before it validates: the zero Config of a field
// runs with the defaults, never with a zero interval.
func TestConfigWithDefaultsFillsZeros(t *testing.T) {
	c := Config{Workers: 1}.withDefaults()
	d := DefaultConfig()
	if c.HeartbeatInterval != d.HeartbeatInterval || c.StartTimeout != d.StartTimeout ||
		c.CrashWindow != d.CrashWindow || c.RestartBackoffMax != d.RestartBackoffMax ||
		c.HeartbeatTimeout != d.HeartbeatTimeout || c.MaxCrashes != d.MaxCrashes {
		t.Errorf("withDefaults() = %+v; want the zero fields from DefaultConfig", c)
	}
}
