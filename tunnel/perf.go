package tunnel

// DefaultWindowSize is the default maximum yamux receive window per stream
// ([Config].WindowSize): how many bytes of one stream may be in flight.
//
// A stream moves at most about WindowSize/2 per round trip, because the
// receiver sends a window update only once half the window is consumed
// (yamux). 8 MiB lets one stream reach ~100 MB/s at 40 ms round trip
// (~400 MB/s at 10 ms), which is what the tunnel's own TCP connection
// reaches with Linux's default send-buffer ceiling (tcp_wmem max 4 MiB);
// 1 MiB capped a stream at ~13 MB/s at 40 ms. The cost: a stream whose
// local reader is slower than the tunnel may buffer up to WindowSize in the
// receiving instance, so the worst case is WindowSize times the number of
// such streams. Idle and fast streams buffer nothing.
const DefaultWindowSize = 8 << 20
