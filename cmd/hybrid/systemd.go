//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/hybrid-server/hybrid/internal/sdnotify"
	"github.com/hybrid-server/hybrid/procpool"
	"github.com/hybrid-server/hybrid/server"
)

// systemdSockets takes the sockets systemd passed to the primary (socket
// activation, deploy/hybrid.socket): the one named "admin" serves the admin
// endpoint, the other (named "http", or unnamed) is the cluster's. Both are
// nil when systemd passed none. They take the place of --addr and
// --admin-addr, which are then only what the logs say they were.
func systemdSockets() (cluster, admin net.Listener, err error) {
	files, names, err := sdnotify.Listeners()
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (net.Listener, net.Listener, error) {
		for _, ln := range []net.Listener{cluster, admin} {
			if ln != nil {
				ln.Close()
			}
		}
		for _, f := range files {
			f.Close() // those not taken yet; closing one twice does no harm
		}
		return nil, nil, err
	}
	clusterName := ""
	for i, f := range files {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("systemd socket %d (%s): %w", i, server.Quote(names[i]), err))
		}
		switch {
		case names[i] == "admin" && admin == nil:
			admin = ln
		case names[i] != "admin" && cluster == nil:
			cluster, clusterName = ln, names[i]
		case names[i] == "admin":
			ln.Close()
			return fail(errors.New("systemd passed two sockets named admin: want at most one"))
		default:
			ln.Close()
			return fail(fmt.Errorf("systemd passed two sockets for the cluster, %s and %s: want one (named http, or unnamed) and at most one named admin",
				server.Quote(clusterName), server.Quote(names[i])))
		}
	}
	return cluster, admin, nil
}

// notifySystemd reports the primary's state to systemd (Type=notify, with
// NotifyAccess=all for upgrades) until ctx ends or this primary has handed
// the service over to an upgrade's new primary; without $NOTIFY_SOCKET it
// returns at once. The caller waits for it to return before it exits.
//
//   - READY=1 with MAINPID= once this primary is the service's main process
//     and serves: once every wanted worker is ready, or, in a primary an
//     upgrade started, at once when it takes over (sup.TookOver);
//   - RELOADING=1 while a reload or an upgrade runs, READY=1 after;
//   - at a hand-over, the old primary says MAINPID=<the new primary's pid>
//     itself, and waits until systemd has read it (sdnotify.Barrier),
//     before it returns: systemd stops a service whose main process
//     exits, new primary and all (KillMode=mixed), and the old one may
//     exit within milliseconds when no connection holds its workers;
//   - STOPPING=1 when the primary starts to drain, only from the service's
//     main process (it took over and has not handed over): with
//     NotifyAccess=all systemd takes STOPPING=1 from any process of the
//     service, and a new primary being rolled back, or the old primary
//     after a hand-over, must not stop it. A primary an upgrade started
//     says nothing at all before it takes over;
//   - WATCHDOG=1 at half of $WATCHDOG_USEC from READY=1 on, while this
//     primary is the main process: systemd sets $WATCHDOG_PID to the main
//     process it started, and a primary started by an upgrade takes the
//     watchdog over from the old one once it has sent MAINPID=
//     (sdnotify.TakeWatchdog), or systemd, hearing no more pings, would
//     kill the service WatchdogSec= after the old primary exits.
//
// It polls the supervisor's snapshot: procpool knows nothing of systemd.
func notifySystemd(ctx context.Context, sup *procpool.Supervisor, log *slog.Logger) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	warned := false // once: a broken NOTIFY_SOCKET must not flood the log at every watchdog tick
	send := func(states ...string) {
		if err := sdnotify.Notify(states...); err != nil && !warned {
			warned = true
			log.Warn("systemd notify failed; further failures are not logged", "err", err.Error())
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	watchdog := sdnotify.WatchdogInterval()
	var lastPing time.Time
	ready, busy := false, false
	var seen int64 // reloads and upgrades seen, so that a short one is not missed
	from := sup.UpgradedFrom()
	tookOverCh := sup.TookOver()
	if from == 0 {
		tookOverCh = nil // serving from the start: READY=1 waits for the workers
	}
	// handOver tells systemd the new primary is the main process now, and
	// waits until systemd has read it: this process may exit next.
	handOver := func() {
		u := sup.Snapshot().LastUpgrade // published before HandedOver closes
		if u == nil || u.Result != procpool.UpgradeSucceeded || u.NewPID == os.Getpid() {
			return
		}
		if ready && !busy {
			send(sdnotify.Reloading) // an upgrade quicker than a tick
		}
		send(sdnotify.MainPID(u.NewPID))
		if err := sdnotify.Barrier(5 * time.Second); err != nil {
			log.Warn("systemd notify: the new main process may not be known before this primary exits", "err", err.Error())
		}
	}
	// becomeReady says READY=1 with MAINPID= this process's pid, and
	// takes the watchdog over from the old primary.
	becomeReady := func(s procpool.Snapshot) {
		ready, seen = true, s.Reloads+s.Upgrades
		send(sdnotify.Ready, sdnotify.MainPID(os.Getpid()),
			sdnotify.Status(fmt.Sprintf("%d of %d workers ready on %s", s.WorkersReady, s.WorkersWanted, s.Addr)))
		if watchdog == 0 && from != 0 {
			watchdog = sdnotify.TakeWatchdog(from)
		}
	}
	for {
		select {
		case <-sup.HandedOver():
			handOver()
			return
		case <-ctx.Done():
			switch {
			case handedOver(sup):
				handOver()
			case tookOver(sup):
				send(sdnotify.Stopping)
			}
			return
		case <-tookOverCh:
			// An upgrade's new primary takes over once every worker is
			// ready: it is the main process from now on.
			tookOverCh = nil
			if !ready && !handedOver(sup) {
				becomeReady(sup.Snapshot())
			}
		case now := <-tick.C:
			s := sup.Snapshot()
			// The snapshot shows the upgrade succeeded just before
			// HandedOver closes: the new primary speaks for the service.
			if u := s.LastUpgrade; handedOver(sup) || u != nil && u.Result == procpool.UpgradeSucceeded && u.NewPID != os.Getpid() {
				handOver()
				return
			}
			started := s.Reloads + s.Upgrades
			switch nowBusy := s.Reloading || s.Upgrading; {
			case !ready:
				if !nowBusy && s.WorkersReady >= s.WorkersWanted && tookOver(sup) {
					becomeReady(s)
				}
			case !busy && (nowBusy || started > seen):
				busy, seen = true, started
				send(sdnotify.Reloading)
			case busy && !nowBusy:
				busy = false
				send(sdnotify.Ready,
					sdnotify.Status(fmt.Sprintf("%d of %d workers ready on %s", s.WorkersReady, s.WorkersWanted, s.Addr)))
			}
			if ready && watchdog > 0 && now.Sub(lastPing) >= watchdog {
				lastPing = now
				send(sdnotify.Watchdog)
			}
		}
	}
}

// handedOver reports whether an upgrade's new primary has taken over from
// this one.
func handedOver(sup *procpool.Supervisor) bool {
	select {
	case <-sup.HandedOver():
		return true
	default:
		return false
	}
}

// tookOver reports whether this primary serves the cluster (at once, but
// in a primary started by an upgrade that is not yet ready).
func tookOver(sup *procpool.Supervisor) bool {
	select {
	case <-sup.TookOver():
		return true
	default:
		return false
	}
}
