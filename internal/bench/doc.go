// Package bench measures sitebridge against direct TCP on the same machine,
// in the same run, and reports every figure as a ratio to that baseline
// (issue 9). cmd/sitebridge-bench is its command line; `make bench` runs the
// full mode and `make bench-short` the short one.
//
// # What runs
//
// The load generator and the target servers live in this process; the
// gateway instances are child processes of the real sitebridge binary, so
// the resident memory read from /proc/PID/status (VmRSS) is that of an
// instance as an operator runs it. One run:
//
//  1. generates a CA and two instance certificates with package tlsgen in a
//     temporary directory (and, from the same CA, one per TLS relay),
//     writes one config per instance and checks each with `sitebridge run
//     --check`;
//  2. starts a sink (reads until EOF, then answers the byte count), an echo
//     server (package internal/echo) and a source (writes for a requested
//     time) on a random 127.x.y.z address;
//  3. starts cloud1 (accepts the tunnel; accept ports "sink", "echo" and
//     "source") and onprem1 (dials cloud1 over wss:// with mutual TLS 1.3;
//     connects the three services to the servers above): a 1+1 deployment
//     whose clients reach on-prem servers through the cloud instance;
//  4. starts the references (see References below): two plain TCP
//     relays in a chain, and two relays in a chain with mutual TLS 1.3
//     between them;
//  5. measures resident memory idle and while holding N forwarded
//     connections (1,000), each having echoed once;
//  6. measures each load figure on the direct path (client to server),
//     through the tunnel (client to cloud1's accept port) and through each
//     pair of relays, alternating the paths run by run so that noise on a
//     shared machine falls on all of them; it reports the median of the
//     runs and the ratio of the medians (tunnel / direct, and each
//     reference / direct).
//
// The figures:
//
//   - single-stream throughput: one connection writes 32 KiB chunks to the
//     sink for a fixed time (1.5 s; short mode 0.5 s), half-closes, and
//     waits for the sink's count; bytes over the time to that answer. This
//     is the client-to-server direction: cloud1 writes the tunnel;
//   - the same from server to client (the source writes; onprem1, the
//     dialling end, writes the tunnel, with masked WebSocket frames);
//   - 8-stream throughput: 8 connections to the sink at once, all bytes
//     over the time until the last answer;
//   - echo round trip: 64 bytes written and read back on one connection,
//     10,000 times after 500 warm-up round trips (short: 2,000 after 200);
//     p50 and p99;
//   - new connections per second: 4 workers each connect, echo 64 bytes
//     once and close, in a loop, for 1.5 s (short 0.5 s), from a fresh
//     127.x.y.z client address per run. Not measured through the TLS
//     relays (the cell shows "—" and a note under the table says why);
//     see References;
//   - forwarding CPU per GB, for each throughput figure: the CPU time
//     (user and system, from /proc/PID/stat) the two instances used
//     during each tunnel run, over the bytes the run moved, and the same
//     for each pair of reference relays. Unlike the throughput ratios,
//     which swing with the load other programs put on a shared machine,
//     this says how much work the forwarding itself costs;
//   - resident memory of each instance idle (tunnel up, no connection, 1 s
//     after start-up), and the growth per held connection while 1,000
//     connections are held (1 s after the last opened; VmRSS, median of 5
//     samples). Garbage not yet collected counts, as it does for an
//     operator.
//
// # References
//
// Each reference is a pair of relay processes in a chain (client ->
// relay1 -> relay2 -> server), the process and socket layout of the 1+1
// tunnel, run by `sitebridge-bench relay` (see [Relay]): one connection
// dialled per client connection, io.Copy both ways, half-close passed on.
// They answer what any design with that layout costs on this machine,
// whatever its protocol:
//
//   - "2 TCP relays" (-no-relay turns it off): both legs plain TCP, so
//     io.Copy splices and the bytes never reach user space. The floor for
//     two forwarding processes, and how much of the tunnel's cost is the
//     layout itself;
//   - "2 TLS relays" (-no-tls-relay turns it off): the leg between relay1 and
//     relay2 is mutual TLS 1.3 (crypto/tls, one TLS connection per client
//     connection, no WebSocket, no yamux; half-close passed on as
//     close_notify). Each relay has its own certificate, issued with tlsgen in
//     the run's directory by the CA the instances use, and accepts only a peer
//     whose certificate chains to that CA. TLS rules out splice (and this
//     kernel has no kTLS), so every byte is read, sealed or opened, and written
//     in user space by both processes. It is the floor in layers (TLS and
//     nothing else) for any design that encrypts between two forwarding
//     processes: a round trip through it is what such a design pays for its
//     hops and its TLS. For bulk transfer it is the plainest such design, not
//     a bound:
//     io.Copy reads 32 KiB at a time and crypto/tls writes each 16 KiB record
//     with a system call of its own, where the tunnel reads up to 256 KiB and
//     writes sixteen records in one call (tunnel/cork.go), so the tunnel can
//     spend less CPU per GB than these relays. relay1, next to the client,
//     dials relay2 and is the TLS client (in the tunnel, the dialling end is
//     onprem1, next to the server); once the handshake is done, both directions
//     cost the same in TLS. Its new-connections figure is left out: each client
//     connection would pay a full TLS handshake (two signatures and two chain
//     verifications), while the tunnel opens a stream on one long-lived TLS
//     session, so the figure would measure the handshake, not the layout;
//     Figure.TLSRelayStatus says so.
//
// -relay-copy N makes both references copy every byte through user-space
// buffers of N bytes instead of io.Copy: the plain relays then show what
// two forwarding processes cost when the bytes must reach user space (as
// they must under TLS without kTLS), without any encryption.
//
// In the JSON, Figure.Relay and Figure.TLSRelay (with their runs) are
// the references' medians; the table prints each beside direct as a
// ratio. The references have no targets.
//
// Every loop is bounded in count and in time, every connection has a
// deadline, the whole run has a time limit, and it stops by itself.
// SIGINT or SIGTERM stops it early, with the same cleanup.
//
// # Site store
//
// The group "store" (after the loopback figures, with their instances
// gone) measures the site store through its cache API with the Go client
// (package cacheclient). It starts a site of two instances (store1 and
// store2, real processes on a random 127.x.y.z) that share a cluster and
// so a store with the default scheme (257 partitions, one backup), and
// waits until GET /api/v1/store on both reports a settled table with two
// primaries. The baseline, in the same run, is the same HTTP handler
// (package cacheapi) over an in-memory map (cachetest.Memory) served by
// this process: what the same client pays for one unreplicated map, so
// the ratio is the cost of partitioning, forwarding and replication.
// For each value size (100 B and 4 KiB, one cache each):
//
//  1. every key (10,000; short mode 2,000) is put once on both paths,
//     which is also the warm-up;
//  2. 16 workers, spread over one client per endpoint (the two instances'
//     admin endpoints; two clients of the baseline), put the value under
//     random keys for 2 s (short mode 0.3 s) or 2,000,000 operations;
//     puts/s and put latency p50 and p99;
//  3. the same with gets, each checked to return the value.
//
// Runs alternate baseline and store as above. Operations that fail are
// counted and left out of the figures; a run in which more than 1% fail
// fails. The figures have no target. In [StoreResults] Direct is the
// baseline and Tunnel the store.
//
// # Federation
//
// The group "federation" (after the site store) measures replication
// between two sites. It starts cloud1 (site cloud, accepting the tunnel)
// and onprem1 (site onprem, dialling it), one instance per site and so no
// cluster and no backups, real processes on a random 127.x.y.z, with the
// scheme trades (caches "trades*") federated active-active, and waits
// until an entry put at cloud1 can be read at onprem1. Every write is a
// 100-byte value put at cloud1 with the Go client; the federation admin
// API of cloud1 (POST /api/v1/federation/onprem/{op}, GET
// /api/v1/federation, GET /api/v1/federation/digests) drives and watches
// the link. In this order, on sites that hold only the probe entry at
// first (a replicate-all sends the whole scheme):
//
//  1. replicate-all: with federation to onprem stopped, 16 writers put
//     100,000 entries (short mode 10,000); then start and replicate-all,
//     timed until the status shows the round at 100% with nothing
//     pending and both sites' digests are equal. Baseline: the time the
//     writes took. One run;
//  2. throughput: with federation paused, 16 writers put 50,000 entries
//     (short 5,000) into one cache (the baseline: local writes/s), the
//     paused backlog is dropped (start-with-no-backlog) and the link
//     drained; then the same writers put as many into a new cache with
//     federation on, timed from the first write until onprem1's cache
//     listing counts them all (polled every 20 ms): entries/s replicated;
//  3. lag: 500 writes/s for 10 s (short 200/s for 3 s), each on its
//     schedule by 8 writers; the time each put is acknowledged is
//     recorded, and a poller lists onprem1's keys from the first one not
//     yet seen on, every 2 ms, recording when the listing that first
//     showed a key was sent. Lag is that time minus the acknowledgement
//     (0 if the key was seen first); p50 and p99 against the put latency
//     of the same writes.
//
// Throughput and lag runs repeat as the other figures do (3; short 1).
// In [FedResults] Direct is the baseline, Tunnel the federation figure,
// and each figure's Baseline says what the baseline is. Every wait is
// bounded (60 s per phase; short 30 s). The figures have no target.
//
// # WAN profile
//
// With root and iproute2 (`ip`, `tc`), the throughput figures are measured
// again (3 s per run) between two network namespaces that this process
// creates and deletes (sbbench-PID-a, the cloud side, and sbbench-PID-b, the
// on-prem side; addresses 10.231.0.1 and .2 exist only inside them, and
// traffic flows only between them), with 20 ms of delay each way (40 ms
// round trip). The delay comes from `tc netem` on a veth pair; when the
// kernel has no netem qdisc, a delay line in this process forwards the
// packets between two TUN devices instead (MTU 65000; the report says
// which). The client and cloud1 sit in the first namespace, the servers
// and onprem1 in the second, so the tunnel and the direct connection cross
// the same delayed link. Namespaces left by a run that was killed are
// removed by the next run.
package bench
