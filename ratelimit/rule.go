package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Rule is a rate: Count requests per Period, of which up to Burst may come
// at once. The zero Rule admits everything.
type Rule struct {
	Count  int
	Period time.Duration
	Burst  int // 0: Count
}

// MaxCount bounds Count and Burst: past a million per period a rate limit
// is not what the operator meant.
const MaxCount = 1_000_000

// ParseRule parses "100/min": a count, a slash and a period, which is a unit
// (s, sec, second, m, min, minute, h, hour, d, day) or a Go duration
// ("10s", "1h30m"). The burst is the count; set Burst to change it.
func ParseRule(s string) (Rule, error) {
	n, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rule{}, fmt.Errorf("rate %q: want COUNT/PERIOD, such as 100/min", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 || count > MaxCount {
		return Rule{}, fmt.Errorf("rate %q: the count must be an integer from 1 to %d", s, MaxCount)
	}
	var period time.Duration
	switch per {
	case "s", "sec", "second":
		period = time.Second
	case "m", "min", "minute":
		period = time.Minute
	case "h", "hour":
		period = time.Hour
	case "d", "day":
		period = 24 * time.Hour
	default:
		if period, err = time.ParseDuration(per); err != nil {
			return Rule{}, fmt.Errorf("rate %q: the period must be s, min, hour, day or a duration such as 10s", s)
		}
	}
	r := Rule{Count: count, Period: period}
	return r, r.Validate()
}

// Validate reports a rule that cannot be enforced.
func (r Rule) Validate() error {
	if r.Count == 0 && r.Period == 0 && r.Burst == 0 {
		return nil
	}
	switch {
	case r.Count < 1 || r.Count > MaxCount:
		return fmt.Errorf("rate: count %d: want 1 to %d", r.Count, MaxCount)
	case r.Burst < 0 || r.Burst > MaxCount:
		return fmt.Errorf("rate: burst %d: want 1 to %d", r.Burst, MaxCount)
	case r.Period < time.Second || r.Period > 366*24*time.Hour:
		return fmt.Errorf("rate: period %v: want 1s to 366 days", r.Period)
	case r.Period/time.Duration(r.Count) < time.Microsecond:
		return errors.New("rate: more than one request per microsecond")
	}
	return nil
}

// Off reports whether r admits everything.
func (r Rule) Off() bool { return r.Count == 0 }

func (r Rule) burst() int {
	if r.Burst > 0 {
		return r.Burst
	}
	return r.Count
}

// Interval is T, the spacing of requests at the sustained rate.
func (r Rule) Interval() time.Duration { return r.Period / time.Duration(r.Count) }

// String is the rule as ParseRule reads it, with its burst if not Count.
func (r Rule) String() string {
	if r.Off() {
		return "off"
	}
	per := r.Period.String()
	switch r.Period {
	case time.Second:
		per = "s"
	case time.Minute:
		per = "min"
	case time.Hour:
		per = "hour"
	case 24 * time.Hour:
		per = "day"
	}
	s := fmt.Sprintf("%d/%s", r.Count, per)
	if r.Burst > 0 && r.Burst != r.Count {
		s += fmt.Sprintf(" burst %d", r.Burst)
	}
	return s
}

// Decision is the answer for one request.
type Decision struct {
	Allowed bool
	// Remaining is how many more requests would be admitted right now.
	Remaining int
	// RetryAfter, when refused, is how long until one more is admitted.
	RetryAfter time.Duration
	// Reset is how long until the whole burst is available again.
	Reset time.Duration
}

// gcra is the decision on a client whose TAT is tat, at now, in any unit
// of time (ns in the table, µs in Redis): the new TAT and the decision.
// interval and tolerance (Burst·T) are in the same unit.
func gcra(tat, now, interval, tolerance int64) (int64, bool) {
	if tat < now {
		tat = now
	}
	if tat+interval-now > tolerance {
		return tat, false
	}
	return tat + interval, true
}

// decision describes the state tat (after the decision) at now, in ns.
func decision(allowed bool, tat, now, interval, tolerance int64) Decision {
	d := Decision{Allowed: allowed}
	ahead := max(tat-now, 0) // how far the client is ahead of schedule
	d.Remaining = int(max((tolerance-ahead)/interval, 0))
	d.Reset = time.Duration(ahead)
	if !allowed {
		d.RetryAfter = time.Duration(max(tat+interval-tolerance-now, 0))
	}
	return d
}

// ns returns T and Burst·T in nanoseconds, saturating.
func (r Rule) ns() (interval, tolerance int64) {
	interval = int64(r.Interval())
	b := int64(r.burst())
	if interval > math.MaxInt64/b {
		return interval, math.MaxInt64
	}
	return interval, interval * b
}
