// Package tests holds the end-to-end tests of sitebridge. They exercise the
// real binary as an operator would run it, with no in-process shortcuts.
//
// # Overview
//
// The tests build cmd/sitebridge once (CGO_ENABLED=0, without -race), pick
// a random loopback address 127.X.Y.Z for the run so that fixed ports never
// clash with another run, and deploy the 2 cloud + 2 on-prem topology of
// the demo (see package demo) as six child processes: two `sitebridge
// echo` servers and four `sitebridge run` instances, with certificates made
// by `sitebridge tlsgen` and each config checked with `sitebridge run
// --check` first.
//
// They then check, through the real accept ports:
//
//   - a line sent with OpenBSD `nc -N` comes back from the other site and nc
//     exits by itself, which proves that half-close travels both ways;
//
//   - a large transfer (1 GiB, or 64 MiB with -short) in each direction
//     comes back byte for byte (same length, same SHA-256);
//
//   - after kill -9 of a cloud instance, and then of an on-prem instance,
//     new connections keep working through the surviving instance, and the
//     restarted instance forwards again within 2 s of listening;
//
//   - TestFailoverUnderLoad, the HA guarantee: while a load generator opens
//     100 new connections a second (one round trip each) spread over the
//     accept ports of every surviving instance, each instance in turn and
//     then each pair of one cloud and one on-prem instance is killed with
//     SIGKILL and restarted; no connection through a survivor may fail, and
//     each restarted instance must echo through its own accept port within
//     2 s of its process starting. It prints a table per phase (attempts,
//     failures, rate, round-trip percentiles, recovery and mesh times).
//     With -short it runs three phases that kill every instance once.
//
//   - TestReload: config files of running instances are changed and
//     reloaded (SIGHUP, `sitebridge reload`); a new service forwards at once
//     while a held connection and every tunnel stay up, and broken or
//     restart-only configs are refused with their errors;
//
//   - TestDashboard drives the demo's dashboard in headless Chromium
//     (chromedp): stop and start an instance with its buttons, add trades
//     and watch the other site's cache grow; screenshots go to
//     tests/artifacts/ (and $SITEBRIDGE_ARTIFACTS). It skips without
//     chromium, except with CI=true, where it fails.
//
// Readiness is always polled (the admin /api/v1/status endpoint of every
// instance), never slept for. Every child process logs to a file in the
// test's temporary directory; when a test fails, the last lines of every
// log are printed.
//
// The tests need Linux (all of 127.0.0.0/8 is routed to lo) and OpenBSD
// netcat in PATH (Debian package netcat-openbsd).
package tests
