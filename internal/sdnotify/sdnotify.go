// Package sdnotify tells systemd how a daemon is doing, over the
// sd_notify protocol: READY=1 once it serves, STOPPING=1 when it begins to
// shut down, STATUS= lines for `systemctl status`, and WATCHDOG=1 pings
// only while the daemon judges itself healthy, so that a unit with
// WatchdogSec= restarts a daemon that has wedged. Outside such a unit (no
// NOTIFY_SOCKET, no WATCHDOG_USEC) every call does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// send writes one notification; errors are dropped, as the service
// manager going away must not take the daemon down with it.
func send(states ...string) {
	_, _ = daemon.SdNotify(false, strings.Join(states, "\n"))
}

// Ready says startup is done, with a status line.
func Ready(status string) { send(daemon.SdNotifyReady, "STATUS="+status) }

// Stopping says shutdown has begun, with a status line.
func Stopping(status string) { send(daemon.SdNotifyStopping, "STATUS="+status) }

// Status replaces the status line.
func Status(status string) { send("STATUS=" + status) }

// WatchdogInterval is how often Watchdog pings: half of the unit's
// WatchdogSec, or 0 when the unit asks for no pings.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}

// Watchdog pings the watchdog every WatchdogInterval while healthy
// returns nil, until ctx ends. While healthy returns an error it stays
// silent, so systemd restarts the daemon once WatchdogSec passes; each
// change of verdict is logged and shown as the status line. Without a
// watchdog it returns at once.
func Watchdog(ctx context.Context, log *slog.Logger, healthy func() error) {
	every := WatchdogInterval()
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	wasHealthy := true
	for {
		err := healthy()
		switch {
		case err == nil:
			send(daemon.SdNotifyWatchdog)
			if !wasHealthy {
				log.Info("healthy again: watchdog pings resume")
				Status("healthy")
			}
		case wasHealthy:
			log.Warn("unhealthy: watchdog pings stop, so systemd restarts this daemon if it does not recover", "reason", err)
			Status("unhealthy: " + err.Error())
		}
		wasHealthy = err == nil
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
