package bench

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// NamedTarget is a --target: any HTTP server, labelled.
type NamedTarget struct {
	Name string
	// Concurrency, if not 0, replaces the matrix's for this target.
	Concurrency int
	Target
}

// Matrix is a planned run: every workload × mode × worker count against a
// fresh server each, or workload × mode against a running one (URL), or a
// list of targets.
type Matrix struct {
	// Exe is the hybrid binary to start for each cell.
	Exe string
	// URL, when set, is a running server: no server is started, Workers is
	// not used, and no server cost is known.
	URL string
	// Targets, when set, are run as they are and nothing else is.
	Targets []NamedTarget
	// ServerPID, with URL or Targets, is the running server's root process:
	// its tree is measured as a started server's is (CPU per request, peak
	// RSS). 0: no server cost.
	ServerPID int

	Workloads []Workload
	Modes     []string
	Workers   []int
	// ServeArgs go to every `hybrid serve` after the cell's own flags.
	ServeArgs []string
	// Load is the load of every cell. Concurrency 0 means 4 per worker for
	// a server the bench starts (enough to fill each worker's default pool
	// without overflowing its queue), and 8 otherwise.
	Load Options

	// OnCell, if set, is called as cell i (0-based) of n starts.
	OnCell func(i, n int, c Cell)
	// Progress, if set, follows the running cell.
	Progress *Progress
}

type job struct {
	cell   Cell
	target func(base string) Target
}

func (m *Matrix) plan() []job {
	var jobs []job
	if len(m.Targets) > 0 {
		for _, t := range m.Targets {
			c := m.load(0)
			if t.Concurrency > 0 {
				c.Concurrency = t.Concurrency
			}
			jobs = append(jobs, job{
				cell:   Cell{Name: t.Name, Mode: "-", Target: t.Method + " " + t.URL, BodyBytes: len(t.Body), Concurrency: c.Concurrency, Rate: c.Rate},
				target: func(string) Target { return t.Target },
			})
		}
		return jobs
	}
	workers := m.Workers
	if m.URL != "" {
		workers = []int{0}
	}
	for _, w := range m.Workloads {
		modes := m.Modes
		if !w.Modal {
			modes = []string{"-"}
		}
		for _, n := range workers {
			for _, mode := range modes {
				c := m.load(n)
				cell := Cell{Name: w.Name, Mode: mode, Workers: n, Concurrency: c.Concurrency, Rate: c.Rate}
				if m.URL == "" {
					// Default admission, as users get it (--serve-args can
					// set other flags; the last flag wins).
					cell.ServeArgs = append([]string{"--workers", strconv.Itoa(n), "--allow-mode-override"}, m.ServeArgs...)
				}
				jobs = append(jobs, job{cell: cell, target: func(base string) Target { return w.Target(base, mode) }})
			}
		}
	}
	return jobs
}

func (m *Matrix) load(workers int) Options {
	o := m.Load
	if o.Concurrency == 0 {
		o.Concurrency = 8
		if workers > 0 {
			o.Concurrency = 4 * workers
		}
	}
	return o
}

// Cells is the plan: what Run will measure, in order.
func (m *Matrix) Cells() []Cell {
	jobs := m.plan()
	cells := make([]Cell, len(jobs))
	for i, j := range jobs {
		cells[i] = j.cell
	}
	return cells
}

// Run measures every cell in order and appends it to r. A cell whose server
// cannot start records the error and the run goes on; ctx's end stops the
// run, keeping the cells finished so far.
func (m *Matrix) Run(ctx context.Context, r *Report) error {
	jobs := m.plan()
	for i, j := range jobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if m.OnCell != nil {
			m.OnCell(i, len(jobs), j.cell)
		}
		cell, err := m.runCell(ctx, j)
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			cell.Error = err.Error()
		}
		r.Cells = append(r.Cells, cell)
	}
	return nil
}

func (m *Matrix) runCell(ctx context.Context, j job) (Cell, error) {
	cell := j.cell
	o := m.load(cell.Workers)
	o.Concurrency = cell.Concurrency
	base, pid := m.URL, m.ServerPID // pid: the tree to meter, 0 for none
	if cell.ServeArgs != nil {
		srv, err := StartServer(ctx, m.Exe, cell.ServeArgs)
		if err != nil {
			return cell, err
		}
		defer srv.Stop(context.Background())
		base, pid, cell.ServerPID = srv.URL, srv.PID, srv.PID
	}
	var meter *treeMeter
	var meterErr error
	if pid > 0 {
		o.onMeasure = func() { meter, meterErr = startTreeMeter(pid, 100*time.Millisecond) }
	}
	t := j.target(base)
	cell.Target, cell.BodyBytes = t.Method+" "+t.URL, len(t.Body)
	res, err := Run(ctx, t, o, m.Progress)
	if meter != nil {
		cost, stopErr := meter.stop(res.okCount())
		if err == nil && stopErr != nil {
			err = fmt.Errorf("measuring the server: %w", stopErr)
		}
		if cost != nil && res != nil {
			cost.OtherCPUS = max(0, res.MachineCPUS-cost.CPUS-res.ClientCPUS)
			res.Server = cost
		}
	} else if err == nil && meterErr != nil {
		err = fmt.Errorf("measuring the server: %w", meterErr)
	}
	if err != nil {
		return cell, err
	}
	cell.Result = res
	return cell, nil
}
