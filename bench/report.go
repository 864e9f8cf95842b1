package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// ReportFormat is the version of results.json; a reader refuses others.
const ReportFormat = 1

// Report is one bench run: where and how it ran, and every cell.
type Report struct {
	Format  int               `json:"format"`
	Started time.Time         `json:"started"`
	Command []string          `json:"command"` // argv, exactly
	Flags   map[string]string `json:"flags"`   // every flag's effective value
	Hybrid  string            `json:"hybrid_version"`
	Go      string            `json:"go_version"`
	OS      string            `json:"os"`
	Arch    string            `json:"arch"`
	CPU     string            `json:"cpu_model"`
	Cores   int               `json:"cores"`
	Host    string            `json:"hostname"`
	Cells   []Cell            `json:"cells"`
}

// Cell is one measured configuration and what it gave.
type Cell struct {
	// Name is the workload, or the label of a --target.
	Name string `json:"name"`
	// Mode is inline, pool or isolate; "-" for a workload without modes or
	// a target.
	Mode string `json:"mode"`
	// Workers is the server's worker count; 0 when the bench did not start
	// the server and cannot know it.
	Workers     int      `json:"workers"`
	Target      string   `json:"target"` // "METHOD URL"
	BodyBytes   int      `json:"body_bytes"`
	Concurrency int      `json:"concurrency"`
	Rate        float64  `json:"rate,omitempty"` // requests/s; 0 is closed loop
	ServeArgs   []string `json:"serve_args,omitempty"`
	// ServerPID is the primary the bench started, measured and stopped.
	ServerPID int     `json:"server_pid,omitempty"`
	Result    *Result `json:"result,omitempty"`
	// Error says why a cell has no result (its server did not start…).
	Error string `json:"error,omitempty"`
}

// Key names a cell across reports: name, mode and worker count.
func (c Cell) Key() string { return fmt.Sprintf("%s/%s/w%d", c.Name, c.Mode, c.Workers) }

// NewReport describes this machine and this run; cells come later.
func NewReport(argv []string, flags map[string]string, version string) *Report {
	host, _ := os.Hostname()
	return &Report{
		Format: ReportFormat, Started: time.Now().UTC().Truncate(time.Second),
		Command: argv, Flags: flags, Hybrid: version, Go: runtime.Version(),
		OS: runtime.GOOS, Arch: runtime.GOARCH, CPU: cpuModel(), Cores: runtime.NumCPU(), Host: host,
		Cells: []Cell{},
	}
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// WriteFile writes r as indented JSON.
func (r *Report) WriteFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// ReadReport reads a results.json.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Format != ReportFormat {
		return nil, fmt.Errorf("%s: results format %d, want %d", path, r.Format, ReportFormat)
	}
	for _, c := range r.Cells {
		if c.Result == nil {
			continue
		}
		if _, err := c.Result.Histogram.decode(); err != nil {
			return nil, fmt.Errorf("%s: cell %s: %w", path, c.Key(), err)
		}
	}
	return &r, nil
}
