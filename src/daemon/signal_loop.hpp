// The daemon's life after parsing: start it, then wait on signals and a periodic
// tick until it stops. SIGHUP reloads, SIGTERM/SIGINT drain (a second one closes
// everything), and each tick refreshes systemd's STATUS= and feeds its watchdog
// while every worker loop still turns.
#pragma once

#include "daemon/daemon.hpp"
#include "stickyd/config.hpp"

namespace stickyd {

// Runs the daemon until it stops; returns the process's exit status (0 after a
// clean stop, 1 when it could not start or a worker failed). Start-up errors are
// one line on stderr.
int serve(Config config, DaemonOptions options);

}  // namespace stickyd
